"""The production instance (``deploy/dagster.postgres.yaml``) against a live PostgreSQL server.

Every assertion on Dagster's state is SQL on the server's tables (``runs``, ``run_tags``,
``event_logs``, ``concurrency_limits``, ``concurrency_slots``, ``pending_steps``), not only what
``DagsterInstance`` says: the CLI run, its step processes and the daemon all reach the same
database through the ``DAGSTER_PG_*`` variables, exactly as a deployment does.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import duckdb
import pytest

from devtools.commands import materialize_command, running_daemon
from devtools.instance import POSTGRES_INSTANCE
from whisper_pipeline.defs.dead_runs import PID_TAG
from whisper_pipeline.defs.landing import LOOKBACK_ENV
from whisper_pipeline.execution.placement import GPU_POOL
from whisper_pipeline_tests.conftest import REPOSITORY, materialize_cli, planned_and_cached
from whisper_pipeline_tests.tables import TABLES, assert_each_file_once, read_tables
from whisper_pipeline_tests.test_crash import wait_for
from whisper_pipeline_tests.test_dead_runs import FIRST_RUN_FILES, linux_only, stop

pytestmark = pytest.mark.slow  # the real model through the Dagster CLI, and a daemon

PARTITION = "2026-11-18"
SHORT_CLIPS = ("jfk.flac", "lj001_0001.wav", "lj001_0002.wav")
"""About 23 s of speech: a quick partition, three files in one shard."""

DEAD_RUN_BOUND_S = 120
"""Daemon start to the dead run marked failed: the daemon's and its code server's start on 2
busy cores, then the sensor's first tick (its 36 s bound applies to a daemon already up)."""


@pytest.fixture
def database(postgres_server, request):
    """A fresh, empty database on the session's server for this test alone."""
    test = re.sub(r"\W", "_", request.node.name.lower())[:50]
    name = f"{test}_{uuid.uuid4().hex[:8]}"
    return postgres_server.create_database(name)


@pytest.fixture
def postgres_home(tmp_path, database, monkeypatch):
    """``DAGSTER_HOME`` holding ``deploy/dagster.postgres.yaml``, pointed at ``database``."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(POSTGRES_INSTANCE, home / "dagster.yaml")
    for variable, value in database.env.items():
        monkeypatch.setenv(variable, value)  # materialize_cli and the daemon inherit them
    return home


def sql(database, query: str, *params) -> list[tuple]:
    """Rows of ``query`` on a fresh connection (each call sees every commit so far)."""
    connection = database.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()
    finally:
        connection.close()


def run_statuses(database) -> dict[str, str]:
    return dict(sql(database, "select run_id, status from runs"))


def held_gpu_slots(database) -> list[tuple]:
    """``(run_id, step_key)`` of every ``gpu`` slot a step holds."""
    return sql(
        database,
        "select run_id, step_key from concurrency_slots"
        " where concurrency_key = %s and not deleted and run_id is not null",
        GPU_POOL,
    )


def assert_gpu_pool_idle(database) -> None:
    """The pool has its limit row (1), its one slot row, no holder and no waiting step."""
    limits = sql(
        database, 'select "limit" from concurrency_limits where concurrency_key = %s', GPU_POOL
    )
    assert limits == [(1,)]
    slots = sql(
        database,
        "select count(*) from concurrency_slots where concurrency_key = %s and not deleted",
        GPU_POOL,
    )
    assert slots == [(1,)]
    assert held_gpu_slots(database) == []
    assert sql(database, "select run_id, step_key from pending_steps") == []


def events(database, run_id: str, event_type: dg.DagsterEventType) -> list[tuple]:
    """``(step_key, asset_key, timestamp)`` of the run's events of ``event_type``."""
    return sql(
        database,
        "select step_key, asset_key, timestamp from event_logs"
        " where run_id = %s and dagster_event_type = %s order by id",
        run_id,
        event_type.value,  # the stored name: RUN_SUCCESS is "PIPELINE_SUCCESS"
    )


def is_transcription(step_key: str | None) -> bool:
    return bool(step_key and re.search(r"\btranscribe_shards\[\w+\]$", step_key))


def test_cli_run_is_recorded_in_postgres(corpus, tmp_path, postgres_home, database):
    root = tmp_path / "root"
    landing = root / "raw" / PARTITION
    landing.mkdir(parents=True)
    for name in SHORT_CLIPS:
        shutil.copy(corpus / "short" / name, landing / name)

    result = materialize_cli(root, postgres_home, PARTITION)

    assert result.returncode == 0, result.stderr[-5000:]
    assert "postgres" in sql(database, "select version()")[0][0].lower()
    assert not list(postgres_home.glob("**/*.db")), "nothing may fall back to SQLite"
    assert_each_file_once(root, PARTITION, list(SHORT_CLIPS))
    text = duckdb.sql(f"select text from {read_tables(root, PARTITION)['transcripts']}")
    assert any("ask not what your country" in row[0].lower() for row in text.fetchall())

    ((run_id, status),) = run_statuses(database).items()
    assert status == "SUCCESS"
    successes = events(database, run_id, dg.DagsterEventType.STEP_SUCCESS)
    assert any(is_transcription(step_key) for step_key, _, _ in successes)
    materialized = {
        asset_key
        for _, asset_key, _ in events(database, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    }
    assert {f'["{name}"]' for name in TABLES} <= materialized
    assert events(database, run_id, dg.DagsterEventType.RUN_SUCCESS)
    # The transcription step claimed the pool's one slot from PostgreSQL and gave it back.
    assert_gpu_pool_idle(database)


@linux_only
def test_daemon_fails_a_sigkilled_run_and_the_rerun_completes(
    corpus, tmp_path, postgres_home, database
):
    root = tmp_path / "root"
    landing = root / "raw" / PARTITION
    landing.mkdir(parents=True)
    for name in FIRST_RUN_FILES:
        shutil.copy(corpus / "long" / name, landing / name)
    env = dict(os.environ, DAGSTER_HOME=str(postgres_home), WHISPER_PIPELINE_ROOT=str(root))
    # Keep landing_zone_sensor's window (yesterday only) off this fixed date.
    env[LOOKBACK_ENV] = "1"
    log_path = tmp_path / "first_run.log"

    def transcription_holds_the_slot() -> bool:
        started = re.search(r"transcribe_shards\[\w+\] - STEP_START", log_path.read_text())
        return bool(started) and bool(held_gpu_slots(database))

    with open(log_path, "w") as log:
        first = subprocess.Popen(
            materialize_command(PARTITION),
            env=env,
            cwd=REPOSITORY,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_for(transcription_holds_the_slot, first, 600, "transcribe_shards held the gpu slot")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    ((killed, status),) = run_statuses(database).items()
    assert status == "STARTED"  # nobody is left to say it died
    tags = dict(sql(database, "select key, value from run_tags where run_id = %s", killed))
    assert tags[PID_TAG] == str(first.pid)
    ((holder, step_key),) = held_gpu_slots(database)
    assert holder == killed and is_transcription(step_key)
    assert not (root / "tables").exists(), "the killed run must not have published tables"
    cached_before_rerun = len(list((root / "cache").rglob("*.json")))

    started = time.monotonic()
    with running_daemon(env, REPOSITORY, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: run_statuses(database)[killed] == "FAILURE",
            daemon,
            DEAD_RUN_BOUND_S,
            "dead_run_sensor failed the killed run",
        )
        failed_after = time.monotonic() - started
        # The sensor frees the slot right after failing the run (run monitoring would take
        # free_slots_after_run_end_seconds, 30 s, plus its poll interval).
        wait_for(lambda: not held_gpu_slots(database), daemon, 10, "the gpu slot was freed")
        # The rerun beside the daemon, as in production (the daemon's own runs go through the
        # run queue; CLI runs do not).
        second = materialize_cli(root, postgres_home, PARTITION, timeout=600)
    assert second.returncode == 0, second.stderr[-5000:]
    planned, cached = planned_and_cached(second.stderr)
    assert cached == cached_before_rerun  # finished work is not redone
    assert planned + cached == len(FIRST_RUN_FILES)  # every file, once

    statuses = run_statuses(database)
    assert statuses.pop(killed) == "FAILURE"
    ((rerun, rerun_status),) = statuses.items()
    assert rerun_status == "SUCCESS"
    failure = sql(
        database,
        "select event from event_logs where run_id = %s and dagster_event_type = %s",
        killed,
        dg.DagsterEventType.RUN_FAILURE.value,
    )
    assert len(failure) == 1 and "marked failed by dead_run_sensor" in failure[0][0]
    assert any(
        is_transcription(key)
        for key, _, _ in events(database, rerun, dg.DagsterEventType.STEP_SUCCESS)
    )
    assert_gpu_pool_idle(database)
    assert_each_file_once(root, PARTITION, list(FIRST_RUN_FILES))
    sys.stderr.write(f"daemon start to the dead run failed: {failed_after:.1f} s\n")

"""A run SIGKILLed mid-transcription, then started again, completes with nothing lost or doubled."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from devtools.instance import BASE_INSTANCE
from whisper_pipeline.defs.dead_runs import fail_dead_runs
from whisper_pipeline.execution.placement import GPU_POOL
from whisper_pipeline_tests.conftest import (
    REPOSITORY,
    SHARDED,
    materialize_cli,
    planned_and_cached,
)
from whisper_pipeline_tests.tables import assert_each_file_once

pytestmark = pytest.mark.slow  # the real model through the Dagster CLI

PARTITION = "2026-11-19"


def wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    config = yaml.safe_load(BASE_INSTANCE.read_text())
    # Shorter than production's 30 s so the test does not sleep for long.
    config["run_monitoring"]["free_slots_after_run_end_seconds"] = 1
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def test_sigkill_mid_transcription_then_rerun(corpus, tmp_path, home):
    root = tmp_path / "root"
    landing = root / "raw" / PARTITION
    (landing / "long").mkdir(parents=True)
    for path in sorted((corpus / "long").iterdir()):
        (landing / "long" / path.name).write_bytes(path.read_bytes())
    log_path = tmp_path / "first_run.log"
    env = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root))
    command = [
        sys.executable, "-m", "dagster", "asset", "materialize", "-m",
        "whisper_pipeline.definitions", "--select", "*", "--partition", PARTITION, *SHARDED,
    ]  # fmt: skip
    with open(log_path, "w") as log:
        first = subprocess.Popen(
            command, env=env, cwd=REPOSITORY, stdout=log, stderr=log, start_new_session=True
        )

    def cached_results() -> list[Path]:
        return list((root / "cache").rglob("*.json")) if (root / "cache").exists() else []

    def transcribe_steps_started() -> int:
        return len(re.findall(r"transcribe_shards\[\w+\] - STEP_START", log_path.read_text()))

    try:
        # Kill once one shard's results are cached and the next shard is being transcribed.
        wait_for(
            lambda: cached_results() and transcribe_steps_started() >= 2,
            first,
            600,
            "a second shard's transcription started",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    cached_before_rerun = len(cached_results())
    assert not (root / "tables").exists(), "the killed run must not have published tables"

    instance = DagsterInstance.from_config(str(home))
    (run,) = instance.get_runs()
    assert run.status == DagsterRunStatus.STARTED  # nobody is left to say it died
    assert run.run_id in instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids

    # What the daemon's dead_run_sensor does at its next tick (test_dead_runs.py runs the
    # daemon itself): the dead run is failed and its pool slot freed, with nothing done by hand.
    assert fail_dead_runs(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids

    second = materialize_cli(root, home, PARTITION)
    assert second.returncode == 0, second.stderr[-5000:]
    planned, cached = planned_and_cached(second.stderr)
    assert cached == cached_before_rerun > 0  # finished work is not redone
    assert planned + cached == len(list(landing.rglob("*"))) - 1  # every distinct file, once

    long_files = [f"long/{path.name}" for path in (corpus / "long").iterdir()]
    assert_each_file_once(root, PARTITION, long_files)

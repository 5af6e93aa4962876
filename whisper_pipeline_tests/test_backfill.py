"""A backfill launched from the command line runs one queued run per partition through the daemon.

``dagster job backfill`` (Dagster 1.13; there is no ``dagster asset backfill``) creates the
backfill and submits one run per partition to the run queue itself, then marks the backfill
completed: the runs are tagged ``dagster/backfill``, and ``dagster-daemon run`` dequeues them
under ``dagster.yaml``'s limits (two backfill runs at once, one run per partition) while the
``gpu`` pool lets one transcription step run at a time across them.
"""

import os
import shutil
import subprocess
import sys
import time

import dagster as dg
import duckdb
import pytest

from devtools.commands import backfill_command, running_daemon
from whisper_pipeline.defs.jobs import TRANSCRIBE_JOB_NAME
from whisper_pipeline.defs.landing import LOOKBACK_ENV
from whisper_pipeline.defs.metrics import step_intervals
from whisper_pipeline.execution.placement import GPU_POOL
from whisper_pipeline_tests.conftest import REPOSITORY

pytestmark = pytest.mark.slow  # a daemon and the real model in five queued runs

LANDED = {
    "2026-11-01": ("lj001_0002.wav", "lj001_0008.wav"),
    "2026-11-02": ("lj001_0013.wav",),
    "2026-11-03": ("lj001_0011.wav", "lj001_0004.wav"),
    "2026-11-04": ("lj001_0006.wav",),
    "2026-11-05": ("lj001_0016.wav", "lj001_0020.wav"),
}
"""1-2 short clips (2-6 s of speech) per partition, all different: nothing is a cache hit, so
every run transcribes and takes the gpu slot."""
PARTITIONS = sorted(LANDED)
BACKFILL_BOUND_S = 600
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
BACKFILL_TAG = "dagster/backfill"


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start (+1)
        current += change
        peak = max(peak, current)
    return peak


def test_most_at_once():
    assert most_at_once([(0, 2), (1, 3), (2, 4)]) == 2
    assert most_at_once([(0, 1), (1, 2)]) == 1
    assert most_at_once([]) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")
def test_cli_backfill_runs_one_queued_run_per_partition(corpus, tmp_path, dagster_home):
    root = tmp_path / "root"
    for partition, names in LANDED.items():
        landing = root / "raw" / partition
        landing.mkdir(parents=True)
        for name in names:
            shutil.copy(corpus / "short" / name, landing / name)
    # The landing sensor watches only yesterday (no folder there: it requests nothing); the
    # assertions below count only this backfill's runs anyway.
    env = dict(
        os.environ,
        DAGSTER_HOME=str(dagster_home),
        WHISPER_PIPELINE_ROOT=str(root),
        **{LOOKBACK_ENV: "1"},
    )
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    with running_daemon(env, REPOSITORY, tmp_path / "daemon.log") as daemon:
        launched = subprocess.run(
            backfill_command(PARTITIONS),
            env=env,
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert launched.returncode == 0, launched.stderr[-5000:]
        (backfill,) = instance.get_backfills()
        assert f"Launched backfill job `{backfill.backfill_id}`" in launched.stdout
        assert backfill.status.value == "COMPLETED"  # once its runs are submitted
        backfill_runs = dg.RunsFilter(tags={BACKFILL_TAG: backfill.backfill_id})
        deadline = time.monotonic() + BACKFILL_BOUND_S
        while True:
            runs = instance.get_runs(filters=backfill_runs)
            if len(runs) == len(PARTITIONS) and all(run.status in FINISHED for run in runs):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-5000:]
            assert time.monotonic() < deadline, [run.status for run in runs]
            time.sleep(1)

    records = instance.get_run_records(filters=backfill_runs)
    assert sorted(record.dagster_run.tags["dagster/partition"] for record in records) == PARTITIONS
    assert {record.dagster_run.status for record in records} == {dg.DagsterRunStatus.SUCCESS}
    assert {record.dagster_run.job_name for record in records} == {TRANSCRIBE_JOB_NAME}
    assert len(instance.get_runs()) == len(PARTITIONS)  # no sensor or schedule run beside them
    # The run queue's dagster/backfill limit: at most 2 runs between start and end at once.
    assert most_at_once([(record.start_time, record.end_time) for record in records]) <= 2
    # The gpu pool: transcription steps never overlapped across the runs.
    transcriptions = [
        interval
        for record in records
        for interval in step_intervals(instance, record.dagster_run.run_id, "transcribe_shards")
    ]
    assert len(transcriptions) >= len(PARTITIONS)  # every run transcribed (nothing cached)
    assert most_at_once(transcriptions) == 1
    assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids

    for partition, names in LANDED.items():

        def table(name: str, partition: str = partition) -> str:
            return f"read_parquet('{root}/tables/{name}/date={partition}/*.parquet')"

        files = duckdb.sql(f"select relative_path, status from {table('audio_files')}").fetchall()
        assert sorted(files) == sorted((name, "ok") for name in names)
        texts = duckdb.sql(f"select text from {table('transcripts')}").fetchall()
        assert len(texts) == len(names)
        assert all(text.strip() for (text,) in texts), texts

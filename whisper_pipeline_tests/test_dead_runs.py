"""Runs whose process died are failed by ``dead_run_sensor`` and stop holding the gpu pool."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import dagster as dg
import duckdb
import pytest

from devtools.commands import running_daemon
from whisper_pipeline.definitions import defs
from whisper_pipeline.defs.dead_runs import (
    DEAD_RUN_SENSOR_INTERVAL_S,
    HOST_TAG,
    PID_NAMESPACE_TAG,
    PID_TAG,
    START_TAG,
    dead_run_sensor,
    process_start_ticks,
    record_orchestrator,
)
from whisper_pipeline.defs.landing import LOOKBACK_ENV
from whisper_pipeline.execution.placement import GPU_POOL
from whisper_pipeline_tests.conftest import REPOSITORY, materialize_cli
from whisper_pipeline_tests.test_crash import wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


@pytest.fixture
def instance(dagster_home):
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


def dead_pid() -> tuple[int, int]:
    """Pid and start ticks of a process that has just exited (and been reaped)."""
    process = subprocess.Popen(["sleep", "60"])
    start = process_start_ticks(process.pid)
    process.kill()
    process.wait()
    return process.pid, start


def event(event_type: dg.DagsterEventType, pid: int, step_key: str | None = None):
    return dg.DagsterEvent(event_type.value, "transcribe_partition", pid=pid, step_key=step_key)


def started_run(
    instance: dg.DagsterInstance,
    pid: int,
    start: int,
    host: str | None = None,
    run_start_pid: int | None = None,
    step_pids: tuple[int, ...] = (),
) -> str:
    """A STARTED run tagged with an orchestrator, its RUN_START event and STEP_START events."""
    run_id = str(uuid.uuid4())
    tags = {
        HOST_TAG: host or socket.gethostname(),
        PID_NAMESPACE_TAG: os.readlink("/proc/self/ns/pid"),
        PID_TAG: str(pid),
        START_TAG: str(start),
    }
    instance.add_run(dg.DagsterRun(job_name="transcribe_partition", run_id=run_id, tags=tags))
    started = event(dg.DagsterEventType.RUN_START, run_start_pid or pid)
    instance.report_dagster_event(started, run_id)
    for index, step_pid in enumerate(step_pids):
        step = event(dg.DagsterEventType.STEP_START, step_pid, f"step_{index}")
        instance.report_dagster_event(step, run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    return run_id


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return failure.dagster_event.message


@linux_only
def test_sensor_fails_runs_whose_process_is_gone_and_frees_their_slots(instance):
    me = os.getpid()
    my_start = process_start_ticks(me)
    pid, start = dead_pid()
    dead = started_run(instance, pid, start)
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(GPU_POOL)  # as a run's first claim does
    storage.claim_concurrency_slot(GPU_POOL, dead, "transcribe_shards[shard_00000]")
    assert storage.get_concurrency_info(GPU_POOL).active_run_ids == {dead}
    reused = started_run(instance, me, my_start + 1)  # the pid now belongs to another process
    alive = started_run(instance, me, my_start)
    elsewhere = started_run(instance, pid, start, host="another-host")
    step_alive = started_run(instance, pid, start, step_pids=(me,))
    inherited = started_run(instance, pid, start, run_start_pid=me)  # a re-execution's tags

    result = dead_run_sensor(dg.build_sensor_context(instance=instance))

    assert isinstance(result, dg.SkipReason)
    assert dead in result.skip_message and reused in result.skip_message
    statuses = {run_id: instance.get_run_by_id(run_id).status for run_id in (dead, reused)}
    assert set(statuses.values()) == {dg.DagsterRunStatus.FAILURE}
    host = socket.gethostname()
    assert failure_message(instance, dead) == (
        f"process {pid} on {host} is gone; marked failed by dead_run_sensor"
    )
    assert failure_message(instance, reused).startswith(f"process {me} on {host} is gone")
    assert not storage.get_concurrency_info(GPU_POOL).active_run_ids
    for run_id in (alive, elsewhere, step_alive, inherited):
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED

    again = dead_run_sensor(dg.build_sensor_context(instance=instance))
    assert again.skip_message == f"no dead runs on {host}"
    assert len(instance.all_logs(dead, of_type=dg.DagsterEventType.RUN_FAILURE)) == 1


@dg.op
def tag_orchestrator(context: dg.OpExecutionContext) -> bool:
    return record_orchestrator(context)


@dg.job(executor_def=dg.multiprocess_executor)
def tagged_job():
    tag_orchestrator()


@linux_only
def test_record_orchestrator_tags_the_run_from_a_step_subprocess(instance):
    with dg.execute_job(dg.reconstructable(tagged_job), instance) as result:
        assert result.success
        assert result.output_for_node("tag_orchestrator") is True
        run_id = result.run_id
    tags = instance.get_run_by_id(run_id).tags
    (run_start,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    (step_start,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    orchestrator = run_start.dagster_event.pid
    assert orchestrator == os.getpid() != step_start.dagster_event.pid  # a separate step process
    assert tags[HOST_TAG] == socket.gethostname()
    assert tags[PID_TAG] == str(orchestrator)
    assert tags[START_TAG] == str(process_start_ticks(orchestrator))


def test_sensor_is_registered_and_running_by_default():
    sensor = defs.resolve_sensor_def("dead_run_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == DEAD_RUN_SENSOR_INTERVAL_S == 30
    assert not sensor.targets  # it requests no runs, it only acts on the instance


def test_run_queue_runs_one_run_per_partition(instance):
    queue = instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 4
    per_partition = {"applyLimitPerUniqueValue": True}
    assert {"key": "dagster/partition", "value": per_partition, "limit": 1} in (
        queue.tag_concurrency_limits
    )
    assert {"key": "dagster/backfill", "limit": 2} in queue.tag_concurrency_limits
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


KILLED_PARTITION = "2026-11-19"
SECOND_PARTITION = "2026-11-20"
FIRST_RUN_FILES = ("voxconverse_aepyx_8k.wav", "apollo11_8k.mp3")
"""About 260 s of audio, one shard: its transcription step holds the gpu slot for ~10 s."""
SECOND_RUN_FILES = ("lj001_0002.wav", "lj001_0008.wav")
SECOND_RUN_BOUND_S = 240
"""Daemon start to the second run's success: code server start and the first sensor tick
(a few seconds), the blocked step's next claim check (at most 15 s), then the run itself (about
a minute on 2 cores). With a daemon already running the tick comes within 30 s instead."""


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
@linux_only
def test_daemon_frees_the_pool_of_a_sigkilled_cli_run(corpus, tmp_path, dagster_home):
    # Production's dagster.yaml as it is: the sensor frees the slots itself, so nothing waits
    # for free_slots_after_run_end_seconds or run monitoring's 120 s poll.
    root = tmp_path / "root"
    landing = root / "raw" / KILLED_PARTITION
    landing.mkdir(parents=True)
    for name in FIRST_RUN_FILES:
        shutil.copy(corpus / "long" / name, landing / name)
    second_landing = root / "raw" / SECOND_PARTITION
    second_landing.mkdir(parents=True)
    for name in SECOND_RUN_FILES:
        shutil.copy(corpus / "short" / name, second_landing / name)
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), WHISPER_PIPELINE_ROOT=str(root))
    # The daemon also runs landing_zone_sensor: keep its window (yesterday only) off this test's
    # partitions, which are fixed dates, or it would launch runs of its own beside them.
    env[LOOKBACK_ENV] = "1"
    log_path = tmp_path / "first_run.log"
    command = [
        sys.executable, "-m", "dagster", "asset", "materialize", "-m",
        "whisper_pipeline.definitions", "--select", "*", "--partition", KILLED_PARTITION,
    ]  # fmt: skip
    instance = dg.DagsterInstance.from_config(str(dagster_home))

    def holds_the_slot() -> bool:
        started = re.search(r"transcribe_shards\[\w+\] - STEP_START", log_path.read_text())
        return bool(started) and bool(
            instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids
        )

    with open(log_path, "w") as log:
        first = subprocess.Popen(
            command, env=env, cwd=REPOSITORY, stdout=log, stderr=log, start_new_session=True
        )
    try:
        wait_for(holds_the_slot, first, 600, "transcribe_shards held the gpu slot")
        (run,) = instance.get_runs()
        steps = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        (step_pid,) = [
            e.dagster_event.pid for e in steps if e.step_key.startswith("transcript_tables.tr")
        ]
        # The run's process alone (the OOM killer's pick): its steps must not outlive it.
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        deadline = time.monotonic() + 5
        while process_start_ticks(step_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_start_ticks(step_pid) is None, "transcribe_shards outlived its run"
    finally:
        stop(first)
    (killed,) = instance.get_runs()
    assert killed.status == dg.DagsterRunStatus.STARTED
    assert killed.tags[PID_TAG] == str(first.pid)  # audio_manifest recorded the orchestrator
    assert instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids == {
        killed.run_id
    }

    started = time.monotonic()
    with running_daemon(env, REPOSITORY, tmp_path / "daemon.log"):
        second = materialize_cli(root, dagster_home, SECOND_PARTITION, timeout=SECOND_RUN_BOUND_S)
        elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stderr[-5000:]
    logging_line = f"daemon start to the second run's success: {elapsed:.1f} s"
    assert elapsed < SECOND_RUN_BOUND_S, logging_line
    sys.stderr.write(logging_line + "\n")

    killed = instance.get_run_by_id(killed.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert failure_message(instance, killed.run_id).endswith("marked failed by dead_run_sensor")
    assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).active_run_ids
    transcripts = f"read_parquet('{root}/tables/transcripts/date={SECOND_PARTITION}/*.parquet')"
    assert duckdb.sql(f"select count(*) from {transcripts}").fetchall() == [(2,)]


@linux_only
def test_sensor_frees_the_slots_of_ended_runs_with_no_step_alive(instance):
    # A daemon-launched run whose worker died is failed by run monitoring within seconds, but
    # its slot would wait for run monitoring's next poll (120 s) plus 30 s.
    pid, start = dead_pid()
    me = os.getpid()
    ended = started_run(instance, pid, start, step_pids=(pid,))
    stepping = started_run(instance, pid, start, step_pids=(me,))  # a step still decodes
    elsewhere = started_run(instance, pid, start, host="another-host")
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(GPU_POOL)
    storage.set_concurrency_slots(GPU_POOL, 3)
    for run_id in (ended, stepping, elsewhere):
        assert storage.claim_concurrency_slot(GPU_POOL, run_id, "transcribe_shards").is_claimed
        instance.report_run_failed(instance.get_run_by_id(run_id), message="worker died")

    result = dead_run_sensor(dg.build_sensor_context(instance=instance))

    assert f"freed the slots of 1 ended runs: {ended}" in result.skip_message
    assert storage.get_concurrency_info(GPU_POOL).active_run_ids == {stepping, elsewhere}

"""The ``celery`` profile: steps on Celery workers over a loopback Redis, through the Dagster CLI.

One ``cpu`` worker (concurrency 2) and one ``gpu`` worker (concurrency 1) serve a partition of
six short corpus clips planned as three shards. The tests read what happened from the run's
event log: which process ran each step (``STEP_START`` carries its pid), when the
transcription steps ran and when the run sent them, and what the tables hold.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from devtools.celery_workers import running_worker
from devtools.commands import materialize_command
from devtools.harness import fresh_dagster_home
from whisper_pipeline.defs.metrics import step_intervals
from whisper_pipeline.execution.celery import (
    BACKEND_ENV,
    BROKER_ENV,
    VISIBILITY_TIMEOUT_ENV,
    CeleryConfigError,
    celery_settings,
    make_worker_app,
)
from whisper_pipeline.execution.placement import CPU_QUEUE, GPU_POOL, GPU_QUEUE
from whisper_pipeline.execution.profiles import CELERY, PROFILE_ENV
from whisper_pipeline_tests.conftest import (
    REPOSITORY,
    materialize_cli,
    plan_config,
    planned_and_cached,
)
from whisper_pipeline_tests.tables import assert_each_file_once

pytestmark = pytest.mark.slow  # the real model through the Dagster CLI, and Celery workers

PARTITION = "2026-11-18"

CLIPS = (
    "short/lj001_0001.wav",
    "short/lj001_0002.wav",
    "short/lj001_0008.wav",
    "short/lj001_0011.wav",
    "short/lj001_0013.wav",
    "short/librivox_ss_0880.wav",
)
"""23 s of English speech in all."""

THREE_SHARDS = plan_config(max_shards=3, min_audio_s_per_shard=8, transcription_steps=3)
"""At least 8 s of audio per shard: three shards for ``CLIPS``, each its own transcription step,
three steps that could overlap if nothing held them to one at a time."""

TRANSCRIBE_OP = "transcribe_shards"
RUN_TIMEOUT_S = 600


def op_of(step_key: str) -> str:
    """``transcript_tables.transcribe_shards[shard_00001]`` -> ``transcribe_shards``."""
    return step_key.rsplit(".", 1)[-1].split("[", 1)[0]


def child_pids(pid: int) -> set[int]:
    """Pids of the live processes whose parent is ``pid`` (a Celery worker's pool processes)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def landed(tmp: Path, corpus: Path) -> tuple[Path, Path]:
    """A storage root with ``CLIPS`` in the partition's landing folder, and a DAGSTER_HOME."""
    root, home = tmp / "root", tmp / "home"
    landing = root / "raw" / PARTITION
    landing.mkdir(parents=True)
    fresh_dagster_home(home)
    for clip in CLIPS:
        shutil.copy(corpus / clip, landing / Path(clip).name)
    return root, home


def celery_env(broker: str, root: Path, home: Path, **extra: str) -> dict:
    """The environment of the run's process and of the workers (profile ``celery``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_PIPELINE_CELERY_")}
    env.update(
        {
            PROFILE_ENV: CELERY,
            BROKER_ENV: broker,
            "WHISPER_PIPELINE_ROOT": str(root),
            "DAGSTER_HOME": str(home),
            **extra,
        }
    )
    env.pop(BACKEND_ENV, None)  # the result backend is the broker's Redis
    return env


def start_run(env: dict, log_path: Path) -> subprocess.Popen:
    """``dagster asset materialize`` of the partition in the background (the run's process)."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            materialize_command(PARTITION, *THREE_SHARDS),
            env=env,
            cwd=REPOSITORY,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(run: subprocess.Popen, log_path: Path) -> str:
    """Wait for the run's process; its output, asserting it succeeded."""
    try:
        run.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = log_path.read_text()
    assert run.returncode == 0, output[-5000:]
    return output


def records(instance: DagsterInstance, run_id: str, event_type: DagsterEventType) -> list:
    return sorted(instance.all_logs(run_id, of_type=event_type), key=lambda r: r.timestamp)


def transcribe_starts(instance: DagsterInstance, dagster_run) -> list:
    """``STEP_START`` records of a run's transcription steps (retries start as STEP_RESTARTED)."""
    starts = records(instance, dagster_run.run_id, DagsterEventType.STEP_START)
    return [r for r in starts if op_of(r.step_key) == TRANSCRIBE_OP]


def first_transcription(instance: DagsterInstance, run: subprocess.Popen, log_path: Path):
    """Wait until the run's first transcription step has started; its ``STEP_START`` record."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = instance.get_runs()
        starts = transcribe_starts(instance, runs[0]) if runs else []
        if starts:
            return starts[0]
        assert run.poll() is None, log_path.read_text()[-5000:]
        assert time.monotonic() < deadline, "no transcription step started"
        time.sleep(0.2)


def plan_of(instance: DagsterInstance, run_id: str) -> tuple[int, int]:
    """``planned_and_cached`` of a run's ``plan_shards`` log line, read from its event log (a
    step's log lines go to its worker's output, not the run's)."""
    return planned_and_cached(
        "\n".join(r.user_message for r in instance.all_logs(run_id) if r.user_message)
    )


def table_rows(root: Path) -> list[tuple]:
    """``(relative_path, file_id, status, text)`` of every file, from the published tables."""
    return duckdb.sql(
        f"select a.relative_path, a.file_id, a.status, t.text"
        f" from read_parquet('{root}/tables/audio_files/*/*.parquet') a"
        f" left join read_parquet('{root}/tables/transcripts/*/*.parquet') t using (file_id)"
        " order by a.relative_path"
    ).fetchall()


def assert_one_row_per_file(root: Path) -> None:
    assert_each_file_once(root, PARTITION, [Path(clip).name for clip in CLIPS])


def test_missing_or_misspelt_environment_fails_clearly():
    with pytest.raises(CeleryConfigError, match=f"{BROKER_ENV} is not set"):
        celery_settings({})
    with pytest.raises(CeleryConfigError, match=f"BROKR \\(did you mean {BROKER_ENV}\\?\\)"):
        celery_settings({"WHISPER_PIPELINE_CELERY_BROKR": "redis://127.0.0.1:6379/0"})
    with pytest.raises(CeleryConfigError, match="is not a URL Celery can use"):
        celery_settings({BROKER_ENV: "127.0.0.1:6379"})
    with pytest.raises(CeleryConfigError, match="is not a URL Celery can use"):
        celery_settings({BROKER_ENV: "redis://h:6379/0", BACKEND_ENV: "reddis://h:6379/1"})
    with pytest.raises(CeleryConfigError, match="not a positive number of seconds"):
        celery_settings({BROKER_ENV: "redis://h:6379/0", VISIBILITY_TIMEOUT_ENV: "1h"})
    with pytest.raises(CeleryConfigError, match=f"must run with {PROFILE_ENV}=celery"):
        make_worker_app({BROKER_ENV: "redis://h:6379/0"})


def test_worker_app_and_executor_share_the_broker_and_acknowledge_late(monkeypatch):
    import dagster as dg
    from dagster._core.system_config.objects import ResolvedRunConfig

    env = {BROKER_ENV: "redis://h:6379/0", PROFILE_ENV: CELERY}
    app = make_worker_app(env)  # no broker is contacted
    assert app.conf.broker_url == app.conf.result_backend == "redis://h:6379/0"
    assert app.conf.task_acks_late and not app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert "execute_plan" in app.tasks  # dagster-celery's step task
    assert make_worker_app({**env, BACKEND_ENV: "redis://h:6379/1"}).conf.result_backend == (
        "redis://h:6379/1"
    )

    from whisper_pipeline.definitions import build_resources
    from whisper_pipeline.defs.assets.manifest import audio_manifest
    from whisper_pipeline.defs.assets.transcription import transcript_tables
    from whisper_pipeline.defs.jobs import transcribe_partition_job
    from whisper_pipeline.execution.celery import celery_executor

    job = dg.Definitions(
        assets=[audio_manifest, transcript_tables],
        jobs=[transcribe_partition_job],
        resources=build_resources(profile=CELERY),
        executor=celery_executor,
    ).resolve_job_def(transcribe_partition_job.name)
    monkeypatch.delenv(BROKER_ENV, raising=False)
    with pytest.raises(dg.DagsterConfigMappingFunctionError):
        ResolvedRunConfig.build(job, {})  # read when a run starts, not at import
    monkeypatch.setenv(BROKER_ENV, "redis://h:6379/2")
    config = ResolvedRunConfig.build(job, {}).execution.execution_engine_config
    assert config["broker"] == config["backend"] == "redis://h:6379/2"
    assert config["config_source"]["task_acks_late"] is True


@pytest.fixture(scope="module")
def celery_run(corpus, redis_server, tmp_path_factory) -> dict:
    """The partition materialized through the CLI with both workers up; what the tests read."""
    tmp = tmp_path_factory.mktemp("celery")
    root, home = landed(tmp, corpus)
    env = celery_env(f"{redis_server}/1", root, home)
    with (
        running_worker(CPU_QUEUE, 2, env, str(REPOSITORY), str(tmp / "cpu.log")) as cpu,
        running_worker(GPU_QUEUE, 1, env, str(REPOSITORY), str(tmp / "gpu.log")) as gpu,
    ):
        run = start_run(env, tmp / "run.log")
        finish(run, tmp / "run.log")
        # Pool processes live as long as their worker (no max-tasks-per-child), so the ones
        # alive now are the ones that ran the steps.
        pools = {CPU_QUEUE: child_pids(cpu.pid), GPU_QUEUE: child_pids(gpu.pid)}
    instance = DagsterInstance.from_config(str(home))
    (dagster_run,) = instance.get_runs()
    return {
        "root": root,
        "instance": instance,
        "run_id": dagster_run.run_id,
        "status": dagster_run.status,
        "run_pid": run.pid,
        "workers": {CPU_QUEUE: cpu.pid, GPU_QUEUE: gpu.pid},
        "pools": pools,
    }


@pytest.fixture(scope="module")
def local_root(corpus, tmp_path_factory) -> Path:
    """The same files and shards through the multiprocess executor (profile ``local``)."""
    tmp = tmp_path_factory.mktemp("local")
    root, home = landed(tmp, corpus)
    completed = materialize_cli(root, home, PARTITION, extra_args=THREE_SHARDS)
    assert completed.returncode == 0, completed.stderr[-5000:]
    return root


def test_every_step_ran_in_a_worker_of_its_queue(celery_run):
    instance, run_id = celery_run["instance"], celery_run["run_id"]
    assert celery_run["status"] == DagsterRunStatus.SUCCESS
    (run_start,) = records(instance, run_id, DagsterEventType.RUN_START)
    assert run_start.dagster_event.pid == celery_run["run_pid"]  # the CLI process orchestrated
    pools = celery_run["pools"]
    assert len(pools[CPU_QUEUE]) == 2 and len(pools[GPU_QUEUE]) == 1
    starts = records(instance, run_id, DagsterEventType.STEP_START)
    ops = {op_of(r.step_key) for r in starts}
    assert {"audio_manifest", "plan_shards", "preprocess_shard", TRANSCRIBE_OP} <= ops
    assert {"write_tables", "subtitle_files"} <= ops
    for record in starts:
        queue = GPU_QUEUE if op_of(record.step_key) == TRANSCRIBE_OP else CPU_QUEUE
        # STEP_START is emitted by the process that runs the step: a pool process of the
        # worker of the step's queue, never the run's process nor a worker's main process.
        assert record.dagster_event.pid in pools[queue], (record.step_key, pools)
    # dagster-celery's engine event names the Celery node that took each step.
    taken = {
        r.step_key: r.dagster_event.engine_event_data.metadata["Celery worker"].value
        for r in records(instance, run_id, DagsterEventType.ENGINE_EVENT)
        if "Celery worker" in r.dagster_event.engine_event_data.metadata
    }
    assert taken.keys() == {r.step_key for r in starts}
    for step_key, node in taken.items():
        queue = GPU_QUEUE if op_of(step_key) == TRANSCRIBE_OP else CPU_QUEUE
        assert node.startswith(f"{queue}@"), (step_key, node)


def test_one_transcription_step_at_a_time(celery_run):
    instance, run_id = celery_run["instance"], celery_run["run_id"]
    intervals = sorted(step_intervals(instance, run_id, TRANSCRIBE_OP))
    assert plan_of(instance, run_id) == (len(CLIPS), 0)
    assert len(intervals) == 3  # THREE_SHARDS
    for (_, end), (next_start, _) in zip(intervals, intervals[1:], strict=False):
        assert next_start >= end, intervals
    # The run sends a transcription step to the broker only once it holds the gpu pool's
    # slot, which the previous step frees when it ends: the pool, not just the single gpu
    # worker, keeps a second transcription step out of the queue.
    submitted = sorted(
        r.timestamp
        for r in records(instance, run_id, DagsterEventType.ENGINE_EVENT)
        if op_of(r.step_key or "") == TRANSCRIBE_OP
        and r.dagster_event.message.startswith("Submitting celery task")
    )
    assert len(submitted) == 3
    for (_, end), next_submitted in zip(intervals, submitted[1:], strict=False):
        assert next_submitted >= end, (intervals, submitted)
    assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots


def test_tables_equal_a_multiprocess_runs(celery_run, local_root):
    celery_rows = table_rows(celery_run["root"])
    assert len(celery_rows) == len(CLIPS)
    assert celery_rows == table_rows(local_root)
    assert_one_row_per_file(celery_run["root"])


def test_gpu_worker_sigkilled_mid_transcription(corpus, redis_server, tmp_path):
    """The whole gpu worker (main and pool process) dies mid-step, as if its node were lost.

    The task was taken but not acknowledged (``task_acks_late``): the run waits, the broker
    hands the task to the next gpu worker after the visibility timeout, and the step runs again
    in the same run, which succeeds. A re-run then transcribes nothing and changes nothing.
    """
    root, home = landed(tmp_path, corpus)
    env = celery_env(f"{redis_server}/2", root, home)
    instance = DagsterInstance.from_config(str(home))
    repo = str(REPOSITORY)

    with running_worker(CPU_QUEUE, 2, env, repo, str(tmp_path / "cpu.log")):
        with running_worker(GPU_QUEUE, 1, env, repo, str(tmp_path / "gpu.log")) as gpu:
            run = start_run(env, tmp_path / "run.log")
            killed = first_transcription(instance, run, tmp_path / "run.log")
            os.killpg(gpu.pid, signal.SIGKILL)
            killed_at = time.time()
        (dagster_run,) = instance.get_runs()
        run_id = dagster_run.run_id
        step = killed.step_key

        # Nothing tells the run that its worker died: it waits, holding the gpu pool's slot.
        time.sleep(3)
        assert run.poll() is None
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED
        ends = instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)
        assert step not in {r.step_key for r in ends}
        claimed = instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
        assert [(s.run_id, s.step_key) for s in claimed] == [(run_id, step)]

        # A new gpu worker takes the unacknowledged task back once it is older than the
        # visibility timeout (checked when the worker starts consuming).
        timeout_s = 2
        time.sleep(max(0.0, killed_at + timeout_s - time.time()))
        replacement_env = dict(env, **{VISIBILITY_TIMEOUT_ENV: str(timeout_s)})
        with running_worker(GPU_QUEUE, 1, replacement_env, repo, str(tmp_path / "gpu2.log")):
            finish(run, tmp_path / "run.log")
            assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
            starts = [r for r in transcribe_starts(instance, dagster_run) if r.step_key == step]
            assert len(starts) == 2  # the killed attempt, and the redelivered one
            assert starts[0].dagster_event.pid != starts[1].dagster_event.pid
            successes = instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)
            transcribed = [r.step_key for r in successes if op_of(r.step_key) == TRANSCRIBE_OP]
            assert sorted(transcribed) == sorted(set(transcribed)) and len(transcribed) == 3
            assert_one_row_per_file(root)
            before = table_rows(root)

            rerun = start_run(env, tmp_path / "rerun.log")
            finish(rerun, tmp_path / "rerun.log")
    rerun_id = next(r.run_id for r in instance.get_runs() if r.run_id != run_id)
    assert plan_of(instance, rerun_id) == (0, len(CLIPS))  # nothing lost: all cached
    assert_one_row_per_file(root)
    assert table_rows(root) == before


def test_gpu_pool_process_sigkilled_mid_transcription(corpus, redis_server, tmp_path):
    """Only the process running the step dies (as under the OOM killer); its worker lives on.

    Celery fails the task (``WorkerLostError``) without redelivering it; the executor makes
    that a ``STEP_UP_FOR_RETRY`` under the op's ``RetryPolicy``, as the multiprocess executor
    does for a crashed step process, and the retry runs in the worker's new pool process.
    (dagster-celery's own loop would spin forever here, holding the ``gpu`` pool's slot.)
    """
    root, home = landed(tmp_path, corpus)
    env = celery_env(f"{redis_server}/3", root, home)
    instance = DagsterInstance.from_config(str(home))
    repo = str(REPOSITORY)
    with (
        running_worker(CPU_QUEUE, 2, env, repo, str(tmp_path / "cpu.log")),
        running_worker(GPU_QUEUE, 1, env, repo, str(tmp_path / "gpu.log")) as gpu,
    ):
        run = start_run(env, tmp_path / "run.log")
        killed = first_transcription(instance, run, tmp_path / "run.log")
        (pool_process,) = child_pids(gpu.pid)
        os.kill(pool_process, signal.SIGKILL)
        finish(run, tmp_path / "run.log")
        assert gpu.poll() is None  # the worker itself lived on
    (dagster_run,) = instance.get_runs()
    assert dagster_run.status == DagsterRunStatus.SUCCESS
    assert killed.dagster_event.pid == pool_process
    retries = records(instance, dagster_run.run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    assert [r.step_key for r in retries] == [killed.step_key]
    assert "WorkerLostError" in retries[0].dagster_event.step_retry_data.error.to_string()
    restarted = records(instance, dagster_run.run_id, DagsterEventType.STEP_RESTARTED)
    assert [r.step_key for r in restarted] == [killed.step_key]
    assert restarted[0].dagster_event.pid != pool_process
    assert not instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
    assert_one_row_per_file(root)

"""What running the steps on Celery workers costs against the multiprocess executor, one host.

The whole shared corpus (``short``, ``long``, ``formats``: 82 files, 20 minutes) is landed in
one partition and materialized through the Dagster CLI twice per plan, each time on a fresh
``DAGSTER_HOME`` (this repository's ``deploy/dagster.yaml``) and storage root:

* **multiprocess**: profile ``local``: the multiprocess executor, one process per step forked
  from its forkserver (``execution.multiprocess.EXECUTOR_CONFIG``), at most 2 steps at once on
  2 cores.
* **celery**: profile ``celery``: a loopback ``redis-server`` (broker and result backend), one
  ``cpu`` worker of concurrency 1 and one ``gpu`` worker of concurrency 1
  (``devtools.celery_workers.worker_command``), so 2 steps at once as well. The workers are
  started and ready before the clock starts (they are long-lived in a deployment); their start-up is
  printed apart.

Plans: ``default`` is ``plan_shards``' default (on CPU at least 30 minutes of audio per shard:
the corpus is one shard, 6 steps) and ``sharded`` 5 minutes per shard (4 shards, 12 steps),
where the per-step costs add up.

Reported per run, from the command and the run's event log:

* ``wall``: the whole ``dagster asset materialize`` command;
* ``steps busy``: the union of the steps' ``STEP_START``..``STEP_SUCCESS`` intervals;
* ``no step running``: the run's ``RUN_START`` to its end less ``steps busy``: the hand-offs
  on the critical path (dispatching a step, noticing it ended);
* ``dispatch``: mean seconds from the executor deciding to run a step to the step's start: the
  multiprocess executor's ``Launching subprocess`` to ``STEP_START`` (fork from the forkserver,
  step set-up), Celery's ``Submitting celery task`` to ``STEP_START`` (publish to Redis, a worker
  taking it, the pool process loading the run and the job, step set-up).

    python benchmarks/celery_overhead.py [--plans default,sharded]

Needs ``redis-server`` on ``PATH``. Prints a Markdown table, the CPU model and the 1-minute load
average before each run, and whether both executors published the same transcripts (texts of
files decoded by temperature fallback, which samples, may differ between any two runs).
"""

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from devtools.celery_workers import running_worker
from devtools.commands import materialize_command
from devtools.instance import BASE_INSTANCE
from whisper_pipeline.execution.celery import BROKER_ENV
from whisper_pipeline.execution.placement import CPU_QUEUE, GPU_QUEUE
from whisper_pipeline.execution.profiles import CELERY, LOCAL, PROFILE_ENV

REPOSITORY = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("WHISPER_PIPELINE_CORPUS", REPOSITORY.parent / "shared" / "corpus"))
PARTITION = "2026-11-20"
TIMEOUT_S = 1800
PLANS = {
    "default": {},
    "sharded": {"min_audio_s_per_shard": 300},
}
"""``plan_shards`` config of each plan."""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_redis() -> Iterator[str]:
    """A loopback ``redis-server`` without persistence for the ``with`` block; its URL."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    break
            assert server.poll() is None and time.monotonic() < deadline, "redis-server not up"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait(timeout=10)


def setup(work: Path) -> tuple[Path, Path]:
    """A fresh storage root holding the corpus in the partition's landing folder, and a home."""
    root, home = work / "root", work / "home"
    for folder in ("short", "long", "formats"):
        shutil.copytree(CORPUS / folder, root / "raw" / PARTITION / folder)
    home.mkdir(parents=True)
    shutil.copy(BASE_INSTANCE, home)
    return root, home


def materialize(env: dict, plan: dict, log_path: Path) -> float:
    """Run the CLI; its wall seconds."""
    import json

    ops = {"transcript_tables": {"ops": {"plan_shards": {"config": plan}}}}
    command = materialize_command(PARTITION, "--config-json", json.dumps({"ops": ops}))
    started = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(
            command, env=env, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        # Timed all the same: a failed blocking check still ran every step before it. The
        # table's status column says so, and the log's tail is printed.
        print(f"{log_path.parent.name}: dagster exited {completed.returncode}; log tail:")
        print("\n".join(log_path.read_text().splitlines()[-12:]))
    return wall


def run_stats(home: Path) -> dict:
    """Steps, busy and idle seconds and mean dispatch latency of the home's only run."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        records = sorted(instance.all_logs(run.run_id), key=lambda r: r.timestamp)
    run_start = run_end = status = None
    starts, intervals, dispatched, dispatch = {}, [], {}, []
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        kind, step = event.event_type, record.step_key
        if kind == DagsterEventType.RUN_START:
            run_start = record.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            run_end, status = record.timestamp, kind.value.removeprefix("PIPELINE_")
        elif kind in (DagsterEventType.STEP_WORKER_STARTING, DagsterEventType.ENGINE_EVENT):
            if kind == DagsterEventType.STEP_WORKER_STARTING or (event.message or "").startswith(
                "Submitting celery task"
            ):
                dispatched[step] = record.timestamp
        elif kind == DagsterEventType.STEP_START:
            starts[step] = record.timestamp
            if step in dispatched:
                dispatch.append(record.timestamp - dispatched.pop(step))
        elif kind == DagsterEventType.STEP_SUCCESS:
            intervals.append((starts.pop(step), record.timestamp))
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    assert run_start is not None and run_end is not None, "the run did not end"
    return {
        "status": status.lower(),
        "steps": len(intervals),
        "run_s": run_end - run_start,
        "busy_s": busy,
        "idle_s": run_end - run_start - busy,
        "dispatch_s": sum(dispatch) / max(len(dispatch), 1),
    }


def transcripts(root: Path) -> dict[str, tuple]:
    """``relative_path -> (file_id, status, text, sampled)`` from the published tables.

    ``sampled``: some segment of the file was decoded at a temperature above 0.
    """
    import pyarrow.parquet as pq

    tables = root / "tables"
    columns = ["file_id", "relative_path", "status"]
    files = pq.read_table(tables / "audio_files", columns=columns).to_pylist()
    texts = pq.read_table(tables / "transcripts", columns=["file_id", "text"]).to_pylist()
    by_id = {row["file_id"]: row["text"] for row in texts}
    segments = pq.read_table(tables / "transcript_segments", columns=["file_id", "temperature"])
    sampled = {r["file_id"] for r in segments.to_pylist() if r["temperature"] > 0}
    return {
        f["relative_path"]: (
            f["file_id"], f["status"], by_id.get(f["file_id"]), f["file_id"] in sampled
        )
        for f in files
    }  # fmt: skip


def compare(local: Path, remote: Path) -> str:
    """Whether both runs published the same files, statuses and texts, in words."""
    a, b = transcripts(local), transcripts(remote)
    if a.keys() != b.keys() or any(a[k][:2] != b[k][:2] for k in a):
        return "files or statuses DIFFER"
    differ = sorted(k for k in a if a[k][2] != b[k][2])
    # Temperature fallback samples (best_of 5, no seed): two runs of any executor can differ
    # on the files that reach it; temperature-0 decoding is deterministic.
    unexplained = [k for k in differ if not (a[k][3] or b[k][3])]
    summary = (
        f"same files and statuses; same text for {len(a) - len(differ)}/{len(a)} files, "
        f"{len(differ) - len(unexplained)} differ after sampled temperature fallback"
    )
    return summary + (f"; differ at temperature 0: {', '.join(unexplained)}" if unexplained else "")


def base_env(profile: str, root: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_PIPELINE_CELERY_")}
    env.update(
        {PROFILE_ENV: profile, "WHISPER_PIPELINE_ROOT": str(root), "DAGSTER_HOME": str(home)}
    )
    return env


def multiprocess(work: Path, plan: dict) -> dict:
    root, home = setup(work)
    load = os.getloadavg()[0]
    wall = materialize(base_env(LOCAL, root, home), plan, work / "run.log")
    return {"wall_s": wall, "load": load, "root": root, **run_stats(home)}


def celery(work: Path, plan: dict) -> dict:
    root, home = setup(work)
    with running_redis() as broker:
        env = dict(base_env(CELERY, root, home), **{BROKER_ENV: broker})
        repo, started = str(REPOSITORY), time.perf_counter()
        with (
            running_worker(CPU_QUEUE, 1, env, repo, str(work / "cpu.log")),
            running_worker(GPU_QUEUE, 1, env, repo, str(work / "gpu.log")),
        ):
            workers_s = time.perf_counter() - started
            load = os.getloadavg()[0]
            wall = materialize(env, plan, work / "run.log")
    return {"wall_s": wall, "load": load, "root": root, "workers_s": workers_s, **run_stats(home)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--plans", default="default,sharded", help="comma-separated: " + ",".join(PLANS)
    )
    args = parser.parse_args()
    assert (CORPUS / "manifest.csv").exists(), f"no corpus at {CORPUS}"
    assert shutil.which("redis-server"), "redis-server is not on PATH"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="celery_overhead_") as scratch:
        for name in args.plans.split(","):
            local = multiprocess(Path(scratch) / f"{name}-multiprocess", PLANS[name])
            remote = celery(Path(scratch) / f"{name}-celery", PLANS[name])
            print(
                f"{name}: celery workers ready in {remote['workers_s']:.1f} s (not timed); "
                f"tables: {compare(local['root'], remote['root'])}"
            )
            rows.append((name, "multiprocess", local, None))
            rows.append((name, "celery", remote, remote["wall_s"] / local["wall_s"]))
    print()
    print(
        "| plan | executor | status | steps | wall (CLI) | ratio | run (events) | steps busy "
        "| no step running | dispatch, mean | load |"
    )
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, executor, stats, ratio in rows:
        cells = [
            name,
            executor,
            stats["status"],
            str(stats["steps"]),
            f"{stats['wall_s']:.1f} s",
            f"{ratio:.2f}x" if ratio else "1",
            f"{stats['run_s']:.1f} s",
            f"{stats['busy_s']:.1f} s",
            f"{stats['idle_s']:.1f} s",
            f"{stats['dispatch_s']:.2f} s",
            f"{stats['load']:.2f}",
        ]
        print(f"| {' | '.join(cells)} |")


if __name__ == "__main__":
    main()

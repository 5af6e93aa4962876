"""Wall time of a 7-day backfill: queued runs through the daemon vs one CLI run after another.

Both modes materialize the same 7 daily partitions (2 short corpus clips each, 14 different
clips: nothing is a cache hit), each on a fresh ``DAGSTER_HOME`` (this repository's
``deploy/dagster.yaml``) and storage root:

* **backfill**: ``dagster-daemon run`` is started and given time to come up (not timed), then
  ``dagster job backfill ... --noprompt`` submits one run per partition to the run queue (the
  policy, ``BackfillPolicy.multi_run(1)``); the daemon dequeues them under ``dagster.yaml``'s
  limits (two ``dagster/backfill`` runs at once, one run per partition, the ``gpu`` pool lets one
  transcription step run at a time). Timed from the command's start to the last run's end.
* **sequential**: ``dagster asset materialize --partition DAY`` for each day, one after another
  (the naive way; these runs skip the queue).

``BackfillPolicy.single_run()`` (one run for the whole range, ``--partition-range``) is not
measured: it is not possible with these assets, which read ``context.partition_key`` (a run of a
partition range has none); see ``whisper_pipeline.defs.landing``'s module docstring.

    python benchmarks/backfill.py

Prints a Markdown table with the CPU model. Other load on the machine skews both modes; the
1-minute load average before each mode is printed beside it.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devtools.commands import backfill_command, materialize_command, running_daemon
from devtools.instance import BASE_INSTANCE
from whisper_pipeline.defs.jobs import TRANSCRIBE_JOB_NAME
from whisper_pipeline.defs.landing import LOOKBACK_ENV
from whisper_pipeline.defs.metrics import step_intervals

REPOSITORY = Path(__file__).resolve().parents[1]
PARTITIONS = [f"2026-11-{day:02d}" for day in range(1, 8)]
CLIPS_PER_PARTITION = 2
TIMEOUT_S = 1800


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def setup(work: Path, corpus: Path) -> tuple[Path, dict]:
    """A fresh DAGSTER_HOME and storage root with the landing folders; returns (home, env)."""
    home, root = work / "home", work / "root"
    home.mkdir(parents=True)
    shutil.copy(BASE_INSTANCE, home)
    clips = sorted((corpus / "short").glob("lj001_*.wav"))
    assert len(clips) >= CLIPS_PER_PARTITION * len(PARTITIONS), "not enough short clips"
    for index, partition in enumerate(PARTITIONS):
        landing = root / "raw" / partition
        landing.mkdir(parents=True)
        for clip in clips[index * CLIPS_PER_PARTITION : (index + 1) * CLIPS_PER_PARTITION]:
            shutil.copy(clip, landing / clip.name)
    # The landing sensor watches only yesterday, so it launches nothing beside the backfill.
    env = dict(
        os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root), **{LOOKBACK_ENV: "1"}
    )
    return home, env


def run_stats(home: Path) -> dict:
    """Runs, their statuses, the most at once, and the gpu's busy seconds, from the instance."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
        intervals = [(r.start_time, r.end_time) for r in records]
        gpu = [
            end - start
            for r in records
            for start, end in step_intervals(instance, r.dagster_run.run_id, "transcribe_shard")
        ]
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return {
        "runs": len(records),
        "ok": sum(r.dagster_run.status.value == "SUCCESS" for r in records),
        "at_once": peak,
        "run_s": sum(end - start for start, end in intervals) / max(len(intervals), 1),
        "gpu_s": sum(gpu),
        "last_end": max(end for _, end in intervals),
    }


def backfill(work: Path, corpus: Path) -> dict:
    from dagster import DagsterInstance

    home, env = setup(work, corpus)
    load = os.getloadavg()[0]
    # Creating the instance makes its SQLite databases before the daemon opens them (a daemon
    # and a client creating a fresh instance's tables at once can race).
    instance = DagsterInstance.from_config(str(home))
    try:
        with running_daemon(env, REPOSITORY, work / "daemon.log") as daemon:
            deadline = time.monotonic() + 120
            while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats():
                assert daemon.poll() is None and time.monotonic() < deadline, "daemon not up"
                time.sleep(0.5)
            started = time.time()
            command = backfill_command(PARTITIONS, TRANSCRIBE_JOB_NAME)
            launched = subprocess.run(
                command, env=env, cwd=REPOSITORY, capture_output=True, text=True
            )
            assert launched.returncode == 0, launched.stdout + launched.stderr
            submitted = time.time() - started
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                runs = instance.get_runs()
                if len(runs) == len(PARTITIONS) and all(run.is_finished for run in runs):
                    break
                assert daemon.poll() is None and time.monotonic() < deadline, "backfill stuck"
                time.sleep(1)
    finally:
        instance.dispose()
    stats = run_stats(home)
    note = f"{submitted:.1f} s to submit the runs"
    wall = stats["last_end"] - started
    mode = "backfill (daemon, queued)"
    return {"mode": mode, "wall_s": wall, "load": load, "note": note, **stats}


def sequential(work: Path, corpus: Path) -> dict:
    home, env = setup(work, corpus)
    load = os.getloadavg()[0]
    started = time.time()
    for partition in PARTITIONS:
        subprocess.run(
            materialize_command(partition),
            env=env,
            cwd=REPOSITORY,
            check=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    wall = time.time() - started
    stats = run_stats(home)
    mode = "sequential `dagster asset materialize`"
    return {"mode": mode, "wall_s": wall, "load": load, "note": "", **stats}


def main() -> None:
    corpus = Path(os.environ.get("WHISPER_PIPELINE_CORPUS", REPOSITORY.parent / "shared/corpus"))
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        results = [backfill(Path(tmp) / "backfill", corpus)]
        results.append(sequential(Path(tmp) / "sequential", corpus))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores. {len(PARTITIONS)} partitions of")
    print(f"{CLIPS_PER_PARTITION} short clips each, bundled tiny.en (CPU, int8).\n")
    print("| mode | wall s | runs ok | most runs at once | mean run s | gpu busy s | load 1m |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in results:
        cells = [r["mode"], f"{r['wall_s']:.1f}", f"{r['ok']}/{r['runs']}", r["at_once"]]
        cells += [f"{r['run_s']:.1f}", f"{r['gpu_s']:.1f}", f"{r['load']:.1f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    daemon, naive = results
    speedup = naive["wall_s"] / daemon["wall_s"]
    print(f"\nbackfill: {daemon['note']}; {speedup:.2f}x the speed of the sequential runs")


if __name__ == "__main__":
    main()

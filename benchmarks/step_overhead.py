"""Measure Dagster's per-step process cost: forkserver with preloaded modules vs spawn.

Runs the same small partition once per start method (``benchmarks/overhead_defs.py``) through
the CLI, in rounds that alternate the methods, and reads precise event times from the run's
event log: start-up is the time from ``STEP_WORKER_STARTING`` (the executor launches the step
process) to ``STEP_START`` (the step's code begins); step work is from ``STEP_START`` to
``STEP_SUCCESS``, which includes modules a step imports on first use. Prints a Markdown table.

    python benchmarks/step_overhead.py [--files 6] [--rounds 1]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from devtools.commands import materialize_command
from devtools.instance import BASE_INSTANCE

REPOSITORY = Path(__file__).resolve().parents[1]
PARTITION = "2026-11-20"
METHODS = ("spawn", "forkserver-no-pyarrow", "forkserver")
"""Start methods of ``benchmarks/overhead_defs.py``; ``forkserver`` is the project's."""


def run_once(method: str, landing_source: Path, work: Path) -> dict:
    """Materialize the partition with one start method; returns timings in seconds."""
    from dagster import DagsterEventType, DagsterInstance

    root, home = work / method / "root", work / method / "home"
    shutil.copytree(landing_source, root / "raw" / PARTITION)
    home.mkdir(parents=True)
    shutil.copy(BASE_INSTANCE, home)
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WHISPER_PIPELINE_ROOT=str(root),
        OVERHEAD_START_METHOD=method,
        PYTHONPATH=str(REPOSITORY),
    )
    command = materialize_command(PARTITION, module="benchmarks.overhead_defs")
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=REPOSITORY, check=True, capture_output=True)
    wall = time.perf_counter() - started
    instance = DagsterInstance.from_config(str(home))
    (run,) = instance.get_runs()
    times: dict = defaultdict(dict)
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == DagsterEventType.STEP_WORKER_STARTING:
            times[event.step_key]["launch"] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_START:
            times[event.step_key]["start"] = entry.timestamp
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            times[event.step_key]["end"] = entry.timestamp
    startups = [t["start"] - t["launch"] for t in times.values() if {"start", "launch"} <= t.keys()]
    work_s = sum(t["end"] - t["start"] for t in times.values() if {"start", "end"} <= t.keys())
    return {
        "method": method,
        "steps": len(startups),
        "wall_s": wall,
        "startup_mean_s": statistics.mean(startups),
        "startup_max_s": max(startups),
        "startup_total_s": sum(startups),
        "step_work_s": work_s,
    }


def main() -> None:
    """Run every start method on the same clips and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6, help="short corpus clips to use")
    parser.add_argument("--rounds", type=int, default=1, help="runs per start method")
    args = parser.parse_args()
    corpus = Path(os.environ.get("WHISPER_PIPELINE_CORPUS", REPOSITORY.parent / "shared/corpus"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        landing = work / "landing"
        landing.mkdir()
        for path in sorted((corpus / "short").glob("lj001_*.wav"))[: args.files]:
            shutil.copy(path, landing / path.name)
        results = [
            run_once(method, landing, work / f"round_{index}")
            for index in range(args.rounds)
            for method in METHODS
        ]
    print(
        "| start method | steps | run wall s | step start-up mean s | max s | sum s | step work s |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in results:
        cells = [r["method"], r["steps"], f"{r['wall_s']:.1f}", f"{r['startup_mean_s']:.2f}"]
        cells += [f"{r['startup_max_s']:.2f}", f"{r['startup_total_s']:.1f}"]
        cells += [f"{r['step_work_s']:.1f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        wall = statistics.mean(r["wall_s"] for r in runs)
        work_s = statistics.mean(r["step_work_s"] for r in runs)
        startup = statistics.mean(r["startup_mean_s"] for r in runs)
        print(f"{method}: run wall {wall:.1f} s, step start-up {startup:.2f} s", end="")
        print(f", step work {work_s:.1f} s in all (mean of {len(runs)} runs)")
    walls = {m: statistics.mean(r["wall_s"] for r in results if r["method"] == m) for m in METHODS}
    base = walls["forkserver"]
    ratios = ", ".join(f"{m} {walls[m] / base:.2f}x" for m in METHODS)
    print(f"run wall time against the project's forkserver: {ratios}")


if __name__ == "__main__":
    main()

"""Where a CLI partition's wall time goes: every step's launch, work, and what lies between.

Materializes one partition of an input set of ``benchmarks/run.py`` (``corpus``, the default, or
``many-short``: the 120 synthesized clips, cached under ``benchmarks/out/many_short/``) with
``dagster asset materialize`` on a temporary storage root and instance, as ``benchmarks/run.py``'s
method 4 does, then reads the run's event log: for each step, when the executor launched its
process (``STEP_WORKER_STARTING``), when its code began (``STEP_START``) and when it ended
(``STEP_SUCCESS``), in seconds from the command's start. Prints a Markdown table with the spans
before the run's first event and after its last one (interpreter start-up and teardown).

    python -m benchmarks.cli_timeline [--inputs corpus|many-short] [--no-pack-windows]

``--no-pack-windows`` runs the partition with window packing off (``run.py``'s method 6).
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, INPUT_SETS, PARTITION, REPOSITORY, load_input_set
from devtools.commands import materialize_command
from devtools.harness import fresh_dagster_home, step_marks


def stage(landing: Path, input_set: str) -> int:
    """Copy an input set's audio into the partition's landing folder; returns the file count."""
    inputs = load_input_set(input_set, None, 120, DEFAULT_OUT)
    for item in inputs:
        target = landing / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(item.path, target)
    return len(inputs)


def main() -> None:
    """Run the partition once and print its timeline."""
    from dagster import DagsterInstance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", choices=INPUT_SETS, default="corpus")
    parser.add_argument("--no-pack-windows", action="store_true", help="window packing off")
    args = parser.parse_args()
    whisper = {"pack_windows": False} if args.no_pack_windows else {}
    run_config = {"resources": {"whisper": {"config": whisper}}}
    with tempfile.TemporaryDirectory(prefix="cli_timeline_") as tmp:
        root, home = Path(tmp) / "root", Path(tmp) / "home"
        count = stage(root / "raw" / PARTITION, args.inputs)
        fresh_dagster_home(home)
        env = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root))
        started = time.time()
        command = materialize_command(PARTITION, "--config-json", json.dumps(run_config))
        subprocess.run(command, env=env, cwd=REPOSITORY, check=True, capture_output=True)
        wall = time.time() - started
        instance = DagsterInstance.from_config(str(home))
        (run,) = instance.get_runs()
        records = instance.all_logs(run.run_id)
        steps = {
            step: {mark: at - started for mark, at in marks.items()}
            for step, marks in step_marks(instance, run.run_id).items()
        }
    first = min(record.timestamp for record in records) - started
    last = max(record.timestamp for record in records) - started
    print(f"{count} files, `dagster asset materialize` {wall:.1f} s\n")
    print("| span | launch s | work s | from s | to s |\n|---|--:|--:|--:|--:|")
    print(f"| before the run's first event | | | 0.0 | {first:.1f} |")
    for step, marks in sorted(steps.items(), key=lambda item: min(item[1].values())):
        launch = marks.get("STEP_START", 0) - marks.get("STEP_WORKER_STARTING", 0)
        end = marks.get("STEP_SUCCESS", marks.get("STEP_FAILURE", last))
        work = end - marks.get("STEP_START", end)
        begin = marks.get("STEP_WORKER_STARTING", marks.get("STEP_START", 0))
        print(f"| `{step}` | {launch:.2f} | {work:.2f} | {begin:.1f} | {end:.1f} |")
    print(f"| after the run's last event | | | {last:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()

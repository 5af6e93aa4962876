"""Does the collector tuning pay: a CLI partition with and without ``gc.freeze`` and the pause.

The project pauses the cyclic garbage collector while the forkserver preloads its modules and
freezes what they made (``whisper_pipeline.execution.preload``), and freezes the run process's
objects (``execution.multiprocess``). This materializes one partition of an input set of
``benchmarks/run.py`` once (the model runs and fills the result cache), then again ``--repeats``
times in each mode, alternating: ``tuned`` (the project as it is) and ``untuned`` (every
process of the run started with a ``sitecustomize`` that makes ``gc.freeze`` and
``gc.disable`` do nothing). The repeats read cached transcripts, so their wall time is the
pipeline's own: process start-up, imports, steps, publishing.

    python -m benchmarks.gc_tuning [--inputs corpus|many-short|real-short] [--repeats 4]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    DEFAULT_OUT,
    INPUT_SETS,
    PARTITION,
    REPOSITORY,
    cpu_model,
    load_input_set,
)
from devtools.commands import materialize_command
from devtools.harness import fresh_dagster_home

UNTUNED = "import gc\n\ngc.freeze = lambda: None\ngc.disable = lambda: None\n"


def materialize(env: dict) -> float:
    """Wall seconds of one ``dagster asset materialize`` of the partition."""
    started = time.perf_counter()
    subprocess.run(
        materialize_command(PARTITION), env=env, cwd=REPOSITORY, check=True, capture_output=True
    )
    return time.perf_counter() - started


def main() -> None:
    """Stage, run once to fill the cache, then alternate the two modes and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", choices=INPUT_SETS, default="many-short")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gc_tuning_") as tmp:
        root, home, site = Path(tmp) / "root", Path(tmp) / "home", Path(tmp) / "site"
        inputs = load_input_set(args.inputs, None, 120, DEFAULT_OUT)
        for item in inputs:
            target = root / "raw" / PARTITION / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item.path, target)
        fresh_dagster_home(home)
        site.mkdir()
        (site / "sitecustomize.py").write_text(UNTUNED)
        tuned = dict(os.environ, DAGSTER_HOME=str(home), WHISPER_PIPELINE_ROOT=str(root))
        paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        untuned = dict(tuned, PYTHONPATH=os.pathsep.join(paths))
        first = materialize(tuned)
        walls: dict[str, list[float]] = {"tuned": [], "untuned": []}
        for _ in range(args.repeats):
            walls["tuned"].append(materialize(tuned))
            walls["untuned"].append(materialize(untuned))
    print(f"{len(inputs)} files ({args.inputs}), {cpu_model()},")
    print(f"first run (model) {first:.1f} s; cached re-runs, {args.repeats} each, alternating:\n")
    print("| mode | median s | mean s | min s | max s |\n|---|--:|--:|--:|--:|")
    for mode, values in walls.items():
        print(
            f"| {mode} | {statistics.median(values):.2f} | {statistics.mean(values):.2f}"
            f" | {min(values):.2f} | {max(values):.2f} |"
        )
    gain = statistics.median(walls["untuned"]) - statistics.median(walls["tuned"])
    print(f"\nuntuned - tuned (medians): {gain:+.2f} s")


if __name__ == "__main__":
    main()

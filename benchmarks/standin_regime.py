"""The pipeline's cost outside the model (issue 29's GPU regime: an infinitely fast model).

In one invocation:

1. makes (or finds) the ``--hours`` set of perturbed corpus copies (``benchmarks.perturbed``)
   and the recording of the real model's outputs (``benchmarks.standin.record``);
2. measures the CPU seconds of preprocessing that set in this process: decode, VAD and log-mel
   of every file by ``core.preprocess.preprocess_file``, as ``benchmarks.common.prepare_chunks``
   runs it (``os.times()``: user + system, children included; the features are counted, then
   dropped);
3. materializes the whole partition with ``dagster asset materialize`` (multiprocess executor,
   forkserver step processes), as ``benchmarks/run.py``'s CLI methods do: a fresh
   ``DAGSTER_HOME`` with ``deploy/dagster.yaml``, the files hard-linked (else copied) to
   ``ROOT/raw/<PARTITION>/``, default run config; with ``benchmarks/standin`` on the CLI's
   ``PYTHONPATH`` and ``$WHISPER_PIPELINE_STANDIN`` set, so every process replays the recording
   instead of running the model (``benchmarks/standin/sitecustomize.py``);
4. reports the CLI's wall time against the goal bound ``1.25 * (preprocess CPU s / cores +
   10)``, the time from the first preprocessing step's start to the first ``generate`` call
   (each process with the stand-in logs its first call's time), and the run's step timeline from
   its event log, as a Markdown table, also written to ``OUT/standin/regime-<hours>h.md`` (with
   ``.json``).

    python -m benchmarks.standin_regime [--hours 2] [--out benchmarks/out]

Exits 1 when the run fails or the bound is missed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, PARTITION, REPOSITORY, AudioInput, cpu_model
from benchmarks.perturbed import perturbed_set
from benchmarks.standin.model import FIRST_GENERATE_ENV, RECORDING_ENV
from benchmarks.standin.record import ensure_recording
from devtools.commands import materialize_command
from devtools.harness import fresh_dagster_home, step_marks

STANDIN_PATH = REPOSITORY / "benchmarks" / "standin"
"""The folder whose ``sitecustomize.py`` installs the stand-in in the CLI's processes."""

BOUND_FACTOR, BOUND_OVERHEAD_S = 1.25, 10.0
"""Issue 29's goal: wall <= 1.25 * (preprocessing CPU s / cores + 10 s)."""


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children so far (``os.times()``)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def preprocess_cpu(inputs: list[AudioInput]) -> dict:
    """Preprocess every input as ``prepare_chunks`` does (numpy's BLAS on one thread, as in a
    preprocessing step), keeping only counts.

    Returns:
        ``cpu_s`` and ``wall_s`` of the preprocessing, ``chunks`` and ``failed`` files.
    """
    from whisper_pipeline.core.preprocess import preprocess_file, single_threaded_blas
    from whisper_pipeline.core.schema import STATUS_FAILED
    from whisper_pipeline.resources.whisper import bundled_model_path, model_feature_extractor

    feature_extractor = model_feature_extractor(bundled_model_path())
    chunks, failed = 0, 0

    def add_chunk(chunk, features):
        nonlocal chunks
        chunks += 1

    started_cpu, started = cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="standin_regime_") as scratch, single_threaded_blas():
        spool_path = os.path.join(scratch, "audio.s16")
        for item in inputs:
            with open(item.path, "rb") as handle:
                done = preprocess_file(handle, None, feature_extractor, spool_path, add_chunk)
            failed += done.status == STATUS_FAILED
    return {
        "cpu_s": cpu_seconds() - started_cpu,
        "wall_s": time.perf_counter() - started,
        "chunks": chunks,
        "failed": failed,
    }


def stage(inputs: list[AudioInput], landing: Path) -> None:
    """Hard-link (copy across file systems) every input to ``landing / name``."""
    for item in inputs:
        target = landing / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item.path, target)
        except OSError:
            shutil.copyfile(item.path, target)


def run_partition(
    inputs: list[AudioInput], recording: Path | None, scratch: Path, log: Path
) -> dict:
    """Materialize the partition with the stand-in; wall time, outcome and event-log marks.

    Args:
        inputs: The partition's files.
        recording: The stand-in's recording; ``None`` runs the real model.
        scratch: A folder for the storage root and ``DAGSTER_HOME``.
        log: Where the CLI's output goes.

    Returns:
        ``wall_s``, ``returncode``, ``status``, ``started`` (epoch s), ``steps`` (step key ->
        event type -> seconds from the start), ``first_event_s``/``last_event_s``,
        ``first_generate_s`` (earliest first ``generate`` call of any process, from the start;
        ``None`` when none logged or without the stand-in), ``transcripts`` and
        ``transcripts_with_text`` rows, and ``metadata``: the ``transcripts`` materialization's
        numeric metadata (peak RSS per step kind, model busy seconds, ...).
    """
    import pyarrow.parquet as pq
    from dagster import AssetKey, DagsterInstance

    root, home = scratch / "root", scratch / "dagster_home"
    stage(inputs, root / "raw" / PARTITION)
    fresh_dagster_home(home)
    generate_log = scratch / "first_generate.txt"
    standin = [str(STANDIN_PATH)] if recording is not None else []
    python_path = [*standin, str(REPOSITORY), os.environ.get("PYTHONPATH", "")]
    replay = {RECORDING_ENV: str(recording), FIRST_GENERATE_ENV: str(generate_log)}
    env = dict(
        os.environ,
        DAGSTER_HOME=str(home),
        WHISPER_PIPELINE_ROOT=str(root),
        PYTHONPATH=os.pathsep.join(part for part in python_path if part),
        **(replay if recording is not None else {}),
    )
    started = time.time()
    with open(log, "w") as handle:
        command = materialize_command(PARTITION)
        completed = subprocess.run(
            command, env=env, cwd=REPOSITORY, stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    wall_s = time.time() - started
    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        records = instance.all_logs(run.run_id)
        steps = {
            step: {mark: at - started for mark, at in marks.items()}
            for step, marks in step_marks(instance, run.run_id).items()
        }
        status = run.status.value
        event = instance.get_latest_materialization_event(AssetKey("transcripts"))
    metadata = {}
    if event is not None:
        for key, value in event.asset_materialization.metadata.items():
            if isinstance(value.value, int | float):
                metadata[key] = value.value
    firsts = []
    if generate_log.exists():
        firsts = [float(line.split()[0]) for line in generate_log.read_text().splitlines()]
    transcripts = root / "tables" / "transcripts" / f"date={PARTITION}" / "part-0.parquet"
    texts = []
    if transcripts.exists():
        texts = pq.read_table(transcripts, columns=["text"])["text"].to_pylist()
    return {
        "wall_s": wall_s,
        "returncode": completed.returncode,
        "status": status,
        "started": started,
        "steps": steps,
        "first_event_s": min(record.timestamp for record in records) - started,
        "last_event_s": max(record.timestamp for record in records) - started,
        "first_generate_s": min(firsts) - started if firsts else None,
        "generate_processes": len(firsts),
        "transcripts": len(texts),
        "transcripts_with_text": sum(bool(text and text.strip()) for text in texts),
        "metadata": metadata,
    }


def timeline(run: dict) -> list[str]:
    """Markdown rows of the run's steps (``benchmarks.cli_timeline``'s table), by start."""
    lines = ["| span | launch s | work s | from s | to s |", "|---|--:|--:|--:|--:|"]
    lines.append(f"| before the run's first event | | | 0.0 | {run['first_event_s']:.1f} |")
    for step, marks in sorted(run["steps"].items(), key=lambda item: min(item[1].values())):
        launch = marks.get("STEP_START", 0) - marks.get("STEP_WORKER_STARTING", 0)
        end = marks.get("STEP_SUCCESS", marks.get("STEP_FAILURE", run["last_event_s"]))
        work = end - marks.get("STEP_START", end)
        begin = marks.get("STEP_WORKER_STARTING", marks.get("STEP_START", 0))
        lines.append(f"| `{step}` | {launch:.2f} | {work:.2f} | {begin:.1f} | {end:.1f} |")
    lines.append(
        f"| after the run's last event | | | {run['last_event_s']:.1f} | {run['wall_s']:.1f} |"
    )
    return lines


def report(hours: float, inputs: list[AudioInput], pre: dict, run: dict) -> tuple[dict, str]:
    """The result (JSON-able) and its Markdown."""
    cores = os.cpu_count() or 1
    bound = BOUND_FACTOR * (pre["cpu_s"] / cores + BOUND_OVERHEAD_S)
    preprocess_starts = [
        marks["STEP_START"]
        for step, marks in run["steps"].items()
        if "preprocess" in step and "STEP_START" in marks
    ]
    first_pre = min(preprocess_starts) if preprocess_starts else None
    latency = None
    if first_pre is not None and run["first_generate_s"] is not None:
        latency = run["first_generate_s"] - first_pre
    green = run["returncode"] == 0 and run["status"] == "SUCCESS"
    passed = green and run["wall_s"] <= bound
    audio_s = sum(item.duration_s for item in inputs)
    result = {
        "hours": hours,
        "files": len(inputs),
        "audio_s": audio_s,
        "cpu": cpu_model(),
        "cores": cores,
        "preprocess": pre,
        "bound_s": bound,
        "passed": passed,
        "first_preprocess_start_s": first_pre,
        "first_generate_after_preprocess_start_s": latency,
        **{key: value for key, value in run.items() if key != "steps"},
    }

    def fmt(value: float | None, unit: str = " s") -> str:
        return "n/a" if value is None else f"{value:.1f}{unit}"

    rows = [
        ("input", f"{len(inputs)} files, {audio_s:.0f} s ({audio_s / 3600:.2f} h) of audio"),
        ("CPU", f"{cpu_model()}, `os.cpu_count()` = {cores}"),
        ("preprocessing CPU (decode + VAD + log-mel, in-process)", fmt(pre["cpu_s"])),
        ("preprocessing wall (in-process, one process)", fmt(pre["wall_s"])),
        ("chunks", str(pre["chunks"])),
        ("goal bound 1.25 * (CPU s / cores + 10)", fmt(bound)),
        ("CLI partition wall, stand-in model", fmt(run["wall_s"])),
        ("run", f"{run['status']} (exit {run['returncode']})"),
        ("verdict", "pass" if passed else "FAIL"),
        ("CLI wall / bound", f"{run['wall_s'] / bound:.2f}"),
        ("first preprocessing step started", fmt(first_pre, " s after the command")),
        ("first `generate` call", fmt(run["first_generate_s"], " s after the command")),
        ("first `generate` after first preprocessing start", fmt(latency)),
        ("transcripts rows (with text)",
         f"{run['transcripts']} ({run['transcripts_with_text']})"),
    ]  # fmt: skip
    lines = [f"# Stand-in regime, {hours:g} h", "", "| measure | value |", "|---|--:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "Steps (seconds from the command's start):", ""] + timeline(run)
    return result, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the whole measurement and print its Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="hours of perturbed audio")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="benchmark output folder")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    inputs = perturbed_set(args.hours, out / "perturbed")
    recording = ensure_recording(out / "standin" / "recording.json")
    print(f"{len(inputs)} files; preprocessing in-process...", file=sys.stderr)
    pre = preprocess_cpu(inputs)
    print(f"preprocessing: {pre['cpu_s']:.1f} CPU s; CLI partition...", file=sys.stderr)
    results = out / "standin"
    with tempfile.TemporaryDirectory(prefix="regime_", dir=results) as scratch:
        log = results / f"regime-{args.hours:g}h-cli.log"
        run = run_partition(inputs, recording, Path(scratch), log)
    result, text = report(args.hours, inputs, pre, run)
    (results / f"regime-{args.hours:g}h.json").write_text(json.dumps(result, indent=1))
    (results / f"regime-{args.hours:g}h.md").write_text(text + "\n")
    print(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

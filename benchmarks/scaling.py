"""Wall time and peak memory per audio hour as one partition grows (issue 29's scale goal).

In one invocation, for each ``--hours`` size: the perturbed set of that many hours of distinct
audio (``benchmarks.perturbed``: speed- and pitch-perturbed copies of the corpus, so content
hashes differ), materialized as one partition through ``dagster asset materialize`` in a fresh
``DAGSTER_HOME`` and storage root (``benchmarks.standin_regime.run_partition``), with the real
model or, with ``--standin``, the replay stand-in (the pipeline's own cost). Reports per size
the CLI's wall time, wall seconds per audio hour, the peak RSS of the preprocessing and
transcription steps (the ``transcripts`` materialization's metadata), and the spread of each per
audio hour across sizes against the goal of 15%.

A peak is one moment of a run. To tell memory that grows with the partition from rare moments
when large buffers coincide, the largest process of the run (with the real model, the
transcription step) is also sampled every 0.5 s (``benchmarks.common.TreeMemorySampler``, from
``/proc``, Linux): the median of its per-minute maxima (the typical peak) and the lowest
anonymous RSS in the last half of the run, its floor (what stays allocated between batches).

    python -m benchmarks.scaling [--hours 0.33,2,10] [--standin] [--out benchmarks/out]

Exits 1 when a run fails.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, TreeMemorySampler, cpu_model
from benchmarks.perturbed import perturbed_set
from benchmarks.standin.record import ensure_recording
from benchmarks.standin_regime import run_partition

SPREAD_GOAL = 0.15
"""Issue 29: wall time and peak memory per audio hour within 15% from 20 minutes to 10 hours."""


def spread(values: list[float]) -> float:
    """``max / min - 1`` of positive values (0 for fewer than two)."""
    return max(values) / min(values) - 1 if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    """Run every size and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", default="0.33,2,10", help="comma-separated partition sizes")
    parser.add_argument("--standin", action="store_true", help="replay stand-in for the model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="benchmark output folder")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    results = out / "scaling"
    results.mkdir(parents=True, exist_ok=True)
    recording = ensure_recording(out / "standin" / "recording.json") if args.standin else None
    rows, failed = [], False
    for hours in [float(h) for h in args.hours.split(",")]:
        inputs = perturbed_set(hours, out / "perturbed")
        print(f"{hours:g} h: {len(inputs)} files...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="scaling_", dir=results) as scratch:
            log = results / f"scaling-{hours:g}h-cli.log"
            sampler = TreeMemorySampler()
            sampler.start()
            try:
                run = run_partition(inputs, recording, Path(scratch), log)
            finally:
                sampler.stop()
        failed |= run["returncode"] != 0
        audio_h = sum(item.duration_s for item in inputs) / 3600
        metadata = run["metadata"]
        rows.append(
            {
                "hours": hours,
                "files": len(inputs),
                "audio_h": audio_h,
                "wall_s": run["wall_s"],
                "status": run["status"],
                "transcribe_peak_rss_mib": metadata.get("transcribe_peak_rss_mib"),
                "preprocess_peak_rss_mib": metadata.get("preprocess_peak_rss_mib"),
                "model_busy_seconds": metadata.get("model_busy_seconds"),
                "first_batch_seconds": metadata.get("first_batch_seconds"),
                **sampler.largest_summary(),
            }
        )
    model = "replay stand-in" if args.standin else "real tiny.en, int8"
    lines = [
        f"# Scaling, {model}: {cpu_model()}",
        "",
        "| hours | files | audio h | wall s | wall s per audio h | transcription peak RSS MiB |"
        " typical peak MiB | floor MiB | preprocessing peak RSS MiB | model busy s |"
        " first batch s | run |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['hours']:g} | {row['files']} | {row['audio_h']:.2f} | {row['wall_s']:.1f} |"
            f" {row['wall_s'] / row['audio_h']:.1f} | {row['transcribe_peak_rss_mib']} |"
            f" {row.get('typical_peak_mib', '-')} | {row.get('floor_anon_mib', '-')} |"
            f" {row['preprocess_peak_rss_mib']} | {row['model_busy_seconds']} |"
            f" {row['first_batch_seconds']} | {row['status']} |"
        )
    per_hour = [row["wall_s"] / row["audio_h"] for row in rows]
    peaks = [row["transcribe_peak_rss_mib"] or 0 for row in rows]
    typical = [row.get("typical_peak_mib") or 0 for row in rows]
    lines += [
        "",
        f"Spread across sizes (goal {SPREAD_GOAL:.0%}): wall per audio hour"
        f" {spread(per_hour):.0%}; transcription peak RSS {spread([p for p in peaks if p]):.0%}"
        " (a peak, not per hour: it should stay flat); typical peak"
        f" {spread([t for t in typical if t]):.0%}.",
    ]
    text = "\n".join(lines)
    suffix = "standin" if args.standin else "model"
    (results / f"scaling-{suffix}.json").write_text(json.dumps(rows, indent=1))
    (results / f"scaling-{suffix}.md").write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

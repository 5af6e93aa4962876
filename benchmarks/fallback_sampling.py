"""Reproducible temperature fallback: what a fresh sampler per row costs, and that it repeats.

The core (``BatchTranscriber``, the pipeline's resource and its two CPU workers) transcribes
an input set's chunks ``--repeats`` times in each of two modes, alternating:

- ``per-row``: the project as it is: each fallback row samples alone on a fresh one-worker
  copy of the model (``WhisperModelResource.sampler``), seeded;
- ``shared``: fallback rows sample in groups on the model's own two workers (``sampler=None``),
  as before sampling was made reproducible.

It prints wall seconds, seconds inside temperature fallback and fallback rows per mode, and,
per mode, how many chunks' results differ between its repeats (text, temperature or words).

    python -m benchmarks.fallback_sampling [--inputs corpus|real-short|many-short] [--repeats 2]
"""

import argparse
import statistics
import time

from benchmarks.common import DEFAULT_OUT, INPUT_SETS, cpu_model, load_input_set, prepare_chunks
from whisper_pipeline.core.batching import BatchTranscriber
from whisper_pipeline.resources.whisper import WhisperModelResource


def run(
    whisper: WhisperModelResource, chunks: list, per_row: bool
) -> tuple[float, float, int, dict]:
    """One transcription of ``chunks``: ``(wall s, fallback s, fallback rows, rows by key)``."""
    model = whisper.load()
    sampler = whisper.sampler if per_row else None
    transcriber = BatchTranscriber(model, whisper.decoding_options(), sampler)
    fallback = {"s": 0.0, "rows": 0}
    group = transcriber._fallback_group

    def timed_group(retries):
        started = time.perf_counter()
        try:
            return group(retries)
        finally:
            fallback["s"] += time.perf_counter() - started
            fallback["rows"] += len(retries)

    transcriber._fallback_group = timed_group
    started = time.perf_counter()
    results = transcriber.transcribe(chunks)
    wall = time.perf_counter() - started
    rows = {
        r.key: [(s.text, s.temperature, tuple(w.word for w in s.words)) for s in r.segments]
        for r in results
    }
    return wall, fallback["s"], fallback["rows"], rows


def main() -> None:
    """Prepare the chunks once, alternate the modes, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", choices=INPUT_SETS, default="corpus")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    whisper = WhisperModelResource()
    inputs = load_input_set(args.inputs, None, 120, DEFAULT_OUT)
    chunks, _ = prepare_chunks(inputs, whisper.feature_extractor())
    runs: dict[str, list] = {"per-row": [], "shared": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(run(whisper, chunks, per_row=mode == "per-row"))
    threads, workers = whisper.parallelism()
    print(f"{len(inputs)} files, {len(chunks)} chunks ({args.inputs}), {cpu_model()},")
    print(f"{workers} workers of {threads} thread(s); {args.repeats} repeats each, alternating:\n")
    print("| mode | median wall s | median fallback s | fallback rows | chunks differing |")
    print("|---|--:|--:|--:|--:|")
    for mode, values in runs.items():
        first = values[0][3]
        differing = {key for _, _, _, rows in values[1:] for key in rows if rows[key] != first[key]}
        print(
            f"| {mode} | {statistics.median(v[0] for v in values):.1f}"
            f" | {statistics.median(v[1] for v in values):.1f}"
            f" | {'/'.join(str(v[2]) for v in values)} | {len(differing)} |"
        )


if __name__ == "__main__":
    main()

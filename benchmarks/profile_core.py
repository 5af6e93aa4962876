"""Where the in-process core spends its time: decode/VAD/features, encode, generate, align.

    python benchmarks/profile_core.py [--batch-size 8] [--inputs DIR] [--no-pack-windows]
                                      [--model DIR] [--device cuda] [--compute-type float16]
    python benchmarks/profile_core.py --parallelism 2x1,1x2 [--batch-size 8]

Wraps the model's ``encode``, CTranslate2 ``generate`` and ``align`` with timers and counts rows
decoded at temperature 0 and in temperature fallback (one CTranslate2 worker, CTranslate2's
default threads). Prints a Markdown table. ``--inputs`` takes a folder of audio (every file under
it, e.g. ``benchmarks/out/many_short/n120`` that ``benchmarks/run.py`` synthesizes) instead of
the corpus. Window packing is on, as by default: packed windows are counted, with the chunks
taken out of them by reason: decoded alone (doubtful words, a failed or silent window, no text),
packed again (unfinished, shared segment), or never decoded packed because packing stopped;
``--no-pack-windows`` turns it off.

With ``--parallelism``, instead times the whole ``BatchTranscriber.transcribe`` of the same
chunks (decoded and featurized once) under each ``THREADSxWORKERS`` setting, each with a freshly
loaded model: CTranslate2 intra-op threads per worker times workers, one batch in flight per
worker. Speed-ups are against the first setting in the same run.
"""

import argparse
import csv
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from faster_whisper import WhisperModel

from devtools.harness import corpus_dir
from whisper_pipeline.core.batching import BatchTranscriber
from whisper_pipeline.core.packing import PackedWindow
from whisper_pipeline.core.preprocess import preprocess_file
from whisper_pipeline.core.types import ChunkInput, DecodingOptions
from whisper_pipeline.resources.whisper import bundled_model_path

REPOSITORY = Path(__file__).resolve().parents[1]


class Timed:
    """Forwards attribute access, timing calls of the named methods into ``totals``."""

    def __init__(self, target, totals: dict, names: tuple[str, ...]):
        self._target, self._totals, self._names = target, totals, names

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if name not in self._names:
            return value

        def timed(*args, **kwargs):
            started = time.perf_counter()
            result = value(*args, **kwargs)
            key = (
                f"{name} (T={kwargs.get('sampling_temperature', 0.0)})"
                if name == "generate"
                else name
            )
            self._totals[key] += time.perf_counter() - started
            rows = len(args[1]) if name == "generate" else 0
            rows = len(args[2]) if name == "align" else rows
            self._totals[f"{key} rows"] += rows
            return result

        return timed


class CountingTranscriber(BatchTranscriber):
    """``BatchTranscriber`` that counts its packed windows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed = self.packed_chunks = 0
        self._lock = threading.Lock()

    def _decode_batch(self, batch):
        packed = [window for window in batch if isinstance(window, PackedWindow)]
        with self._lock:  # batches are decoded on the model's worker threads
            self.packed += len(packed)
            self.packed_chunks += sum(len(window.items) for window in packed)
        return super()._decode_batch(batch)


def compare_parallelism(inputs: list[ChunkInput], settings: str, batch_size: int) -> None:
    """Print wall seconds of transcribing ``inputs`` under each ``THREADSxWORKERS`` setting."""
    print(f"{len(inputs)} chunks, batch size {batch_size}\n")
    print("| threads x workers | transcribe s | speed-up | generate calls |\n|---|--:|--:|--:|")
    first = None
    for setting in settings.split(","):
        threads, workers = (int(part) for part in setting.lower().split("x"))
        model = WhisperModel(
            bundled_model_path(),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=workers,
        )
        transcriber = BatchTranscriber(model, DecodingOptions(batch_size=batch_size))
        started = time.perf_counter()
        transcriber.transcribe(inputs)
        wall = time.perf_counter() - started
        first = first or wall
        print(f"| {threads} x {workers} | {wall:.1f} | {first / wall:.2f}x | ", end="")
        print(f"{transcriber.generate_calls} |")


def main() -> None:
    """Profile the core on every corpus file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--parallelism", help="THREADSxWORKERS settings to compare, e.g. 2x1,1x2")
    parser.add_argument("--inputs", type=Path, help="a folder of audio instead of the corpus")
    parser.add_argument("--no-pack-windows", action="store_true", help="window packing off")
    parser.add_argument("--model", help="CTranslate2 model directory (default: bundled tiny.en)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compute-type", default="int8", help="int8, float16, int8_float16...")
    args = parser.parse_args()
    if args.inputs:
        corpus = args.inputs
        files = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*") if p.is_file())
        files = [name for name in files if not name.endswith((".txt", ".json", ".csv"))]
    else:
        corpus = corpus_dir()
        with open(corpus / "manifest.csv", newline="") as handle:
            files = [row["file"] for row in csv.DictReader(handle)]
    totals: dict = defaultdict(float)
    started = time.perf_counter()
    model_path = args.model or bundled_model_path()
    model = WhisperModel(model_path, device=args.device, compute_type=args.compute_type)
    totals["model load"] = time.perf_counter() - started
    inputs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whisper_profile_") as scratch:
        spool_path = os.path.join(scratch, "audio.s16")
        for name in files:

            def add_chunk(chunk, features, name=name):
                key = (name, chunk.index)
                inputs.append(ChunkInput(key, features, chunk.speech_starts, chunk.speech_ends))

            with open(corpus / name, "rb") as handle:
                done = preprocess_file(handle, None, model.feature_extractor, spool_path, add_chunk)
            if done.error:
                raise RuntimeError(f"{name}: {done.error}")
    totals["decode + VAD + log-mel"] = time.perf_counter() - started
    if args.parallelism:
        compare_parallelism(inputs, args.parallelism, args.batch_size)
        return
    model.model = Timed(model.model, totals, ("generate", "encode", "align"))
    options = DecodingOptions(batch_size=args.batch_size, pack_windows=not args.no_pack_windows)
    transcriber = CountingTranscriber(model, options)
    started = time.perf_counter()
    transcriber.transcribe(inputs)
    totals["transcribe (all)"] = time.perf_counter() - started
    print(f"{len(files)} files, {len(inputs)} chunks, {transcriber.generate_calls} generate calls")
    if not args.no_pack_windows:
        print(f"packed windows: {transcriber.packed} ({transcriber.packed_chunks} chunks)")
        print("chunks taken out of a packed window, by reason:", dict(transcriber.unpacked))
    print()
    print("| part | seconds | rows |\n|---|--:|--:|")
    for key in sorted(k for k in totals if not k.endswith(" rows")):
        print(f"| {key} | {totals[key]:.1f} | {int(totals.get(key + ' rows', 0)) or ''} |")


if __name__ == "__main__":
    main()

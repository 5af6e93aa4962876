"""Record the real model's outputs on the corpus, for ``benchmarks.standin.model.ReplayWhisper``.

Runs the pipeline's core as ``benchmarks/run.py``'s method 5 does (every corpus file through
``core.preprocess.preprocess_file``, then ``BatchTranscriber`` over all chunks) with the bundled
``tiny.en`` on the CPU and the ``whisper`` resource's default decoding options (word timestamps
on, window packing off), its CTranslate2 model wrapped in ``RecordingWhisper``; writes every
``generate`` and ``align`` row, with its window's frame count, to a JSON file (a few MB).

    python -m benchmarks.standin.record [--out benchmarks/out/standin/recording.json] [--limit N]

On 2 CPU cores the corpus takes about a minute.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, load_corpus, prepare_chunks
from benchmarks.standin.model import RecordingWhisper

DEFAULT_RECORDING = DEFAULT_OUT / "standin" / "recording.json"


def record(out: Path = DEFAULT_RECORDING, limit: int | None = None) -> dict:
    """Transcribe the corpus with the real model and write what it returned to ``out``.

    Args:
        out: The recording file (its folder is created).
        limit: Only the corpus's first ``limit`` files.

    Returns:
        A summary: files, chunks, generate and align rows recorded, seconds taken.

    Raises:
        FileNotFoundError: The corpus manifest does not exist.
    """
    from whisper_pipeline.core.batching import BatchTranscriber
    from whisper_pipeline.resources.whisper import WhisperModelResource

    started = time.perf_counter()
    resource = WhisperModelResource(device="cpu")
    model = resource.load()
    recorder = RecordingWhisper(model.model)
    model.model = recorder
    inputs = load_corpus(limit)
    chunks, errors = prepare_chunks(inputs, model.feature_extractor)
    options = resource.decoding_options()
    # No sampler: fallback rows sample on the wrapped model, so they are recorded too.
    transcriber = BatchTranscriber(model, options)
    results = transcriber.transcribe(chunks)
    source = {
        "model": resource.model_name,
        "model_path": resource.model_path(),
        "compute_type": resource.resolved_compute_type(),
        "options": dataclasses.asdict(options),
        "files": len(inputs),
        "audio_s": sum(item.duration_s for item in inputs),
        "chunks": len(chunks),
        "chunk_errors": sum(bool(result.error) for result in results),
        "file_errors": errors,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    document = recorder.recording(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, separators=(",", ":")))
    return {
        "files": len(inputs),
        "chunks": len(chunks),
        "generate_rows": len(document["generate"]),
        "align_rows": len(document["align"]),
        "seconds": time.perf_counter() - started,
        "bytes": out.stat().st_size,
    }


def ensure_recording(path: Path = DEFAULT_RECORDING) -> Path:
    """``path``, recorded first (``record``) when it does not exist."""
    if not path.exists():
        record(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Record and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_RECORDING, help="recording file")
    parser.add_argument("--limit", type=int, help="only the corpus's first N files")
    args = parser.parse_args(argv)
    print(json.dumps(record(args.out.resolve(), args.limit)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

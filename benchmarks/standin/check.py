"""Check the stand-in in-process: the pipeline's core on an input set with ``ReplayWhisper``.

Installs ``ReplayWhisper`` (``benchmarks.standin.model.install``), loads the ``whisper``
resource's model and transcriber as a transcription step does (default options, its fallback
sampler), preprocesses every file (``benchmarks.common.prepare_chunks``) and transcribes all
chunks. Prints, as JSON: chunks, failed chunks, files with text, segments, segments outside
their file's duration (must be 0), words, the replay's counters and the seconds taken.

    python -m benchmarks.standin.check [--inputs corpus] [--recording FILE]

Exits 1 when a chunk failed, no file got text, or a segment lies outside its file.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import DEFAULT_OUT, INPUT_SETS, load_input_set, prepare_chunks
from benchmarks.standin.model import RECORDING_ENV, ReplayWhisper, install
from benchmarks.standin.record import DEFAULT_RECORDING, ensure_recording

TOLERANCE_S = 0.05
"""Slack on the file's duration for a segment's end (decoded length vs the manifest's)."""


def check(input_set: str, recording: Path) -> dict:
    """Transcribe ``input_set`` with the stand-in; the counts ``main`` prints."""
    from whisper_pipeline.resources.whisper import WhisperModelResource

    os.environ[RECORDING_ENV] = str(recording)  # for every ReplayWhisper made (the sampler's)
    install()
    started = time.perf_counter()
    resource = WhisperModelResource()
    model = resource.load()
    if not isinstance(model.model, ReplayWhisper):
        raise RuntimeError("the stand-in was not installed")
    inputs = load_input_set(input_set, None, 120, DEFAULT_OUT)
    durations = {item.name: item.duration_s for item in inputs}
    chunks, errors = prepare_chunks(inputs, model.feature_extractor)
    transcriber = resource.transcriber()
    results = transcriber.transcribe(chunks)
    with_text, outside, segments, words = set(), [], 0, 0
    for result in results:
        name = result.key[0]
        for segment in result.segments:
            segments += 1
            words += len(segment.words)
            if segment.text.strip():
                with_text.add(name)
            if not 0 <= segment.start <= segment.end <= durations[name] + TOLERANCE_S:
                outside.append((name, segment.start, segment.end, durations[name]))
    return {
        "files": len(inputs),
        "file_errors": len(errors),
        "chunks": len(chunks),
        "failed_chunks": sum(bool(result.error) for result in results),
        "files_with_text": len(with_text),
        "segments": segments,
        "segments_outside_file": len(outside),
        "first_outside": outside[:3],
        "words": words,
        "generate_calls": transcriber.generate_calls,
        "replay": dict(ReplayWhisper.stats),
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the check and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", choices=INPUT_SETS, default="corpus")
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    args = parser.parse_args(argv)
    counts = check(args.inputs, ensure_recording(args.recording.resolve()))
    print(json.dumps(counts, indent=1))
    good = counts["files_with_text"] and not counts["failed_chunks"]
    return 0 if good and not counts["segments_outside_file"] else 1


if __name__ == "__main__":
    sys.exit(main())

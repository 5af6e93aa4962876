"""Peak memory of a transcription step against the chunks in its shard.

Usage (from the repository root)::

    python benchmarks/transcription_memory.py [--chunks 40,400] [--wave-frames 0] [--files GLOBS]

For each chunk count, a fresh process stages a shard of that many real speech chunks (log-mel
features of the shared corpus's long recordings, repeated) and transcribes it the way
``transcribe_shards`` does: ``core.streaming.StagedChunks`` then the model's ``BatchTranscriber``
with the pipeline's default resource (tiny.en, int8 on CPU, two workers, batch 8). It prints
the process's peak RSS (``VmHWM``) before and after transcription. ``--wave-frames N`` overrides
the wave's frames (0: the pipeline's own ``wave_frames``); a wave of every chunk is the old
behaviour.
``--files`` takes the chunks from other corpus recordings (comma-separated globs relative to
the corpus, e.g. ``short/pv_*.wav`` for speech tiny.en cannot transcribe, whose windows run
through every fallback temperature); default: the first three long recordings.
``--no-trim`` skips ``core.memory.release_free_memory`` between waves (the ablation).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.harness import corpus_dir

REPOSITORY = Path(__file__).resolve().parents[1]


def vm_hwm_mib() -> float:
    """This process's peak resident set size in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def corpus_files(globs: str | None) -> list[Path]:
    """The corpus recordings ``globs`` names (comma-separated, relative to the corpus), sorted;
    ``None``: the first three long recordings."""
    corpus = corpus_dir()
    if globs is None:
        return sorted((corpus / "long").iterdir())[:3]
    return sorted({path for pattern in globs.split(",") for path in corpus.glob(pattern)})


def worker(chunks: int, wave: int, trim: bool, files: str | None = None) -> dict:
    """Stage ``chunks`` speech chunks and transcribe them; returns the measurements."""

    from whisper_pipeline.core import audio
    from whisper_pipeline.core.chunking import log_mel, split_spooled
    from whisper_pipeline.core.memory import release_free_memory
    from whisper_pipeline.core.preprocess import PreprocessedFile
    from whisper_pipeline.core.staging import ShardWriter
    from whisper_pipeline.core.storage import Storage
    from whisper_pipeline.core.streaming import StagedChunks
    from whisper_pipeline.defs.assets.transcription import wave_frames
    from whisper_pipeline.resources.whisper import WhisperModelResource

    whisper = WhisperModelResource()
    extractor = whisper.feature_extractor()
    with tempfile.TemporaryDirectory() as scratch:
        store = Storage(scratch)
        shard_dir = store.path("shard")
        sources = []
        for path in corpus_files(files):
            with open(path, "rb") as handle:
                decoded = audio.spool(handle, os.path.join(scratch, "spool"))
            for chunk in split_spooled(decoded):
                sources.append((log_mel(extractor, chunk.audio), chunk))
        with ShardWriter(store, shard_dir) as writer:
            for index in range(chunks):
                features, chunk = sources[index % len(sources)]
                writer.add_chunk(f"{index:064x}", dataclasses.replace(chunk, index=0), features)
                duration = features.shape[1] / 100
                writer.add_file(f"{index:064x}", PreprocessedFile(duration, duration, 1, "ok", ""))
        del sources
        transcriber = whisper.transcriber()
        before = vm_hwm_mib()
        started = time.perf_counter()
        size = wave or wave_frames(whisper)
        results = []
        n_mels = extractor.mel_filters.shape[0]
        staged = StagedChunks(store, {0: shard_dir}, n_mels, size, scratch)
        for done in transcriber.transcribe_waves(staged.waves()):  # as transcribe_shards does
            results += done
            if trim:
                release_free_memory()
        return {
            "chunks": chunks,
            "wave_frames": size,
            "trim": trim,
            "peak_before_mib": round(before),
            "peak_mib": round(vm_hwm_mib()),
            "seconds": round(time.perf_counter() - started, 1),
            "with_text": sum(bool(r.segments) for r in results),
            "generate_calls": transcriber.generate_calls,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="40,400")
    parser.add_argument("--wave-frames", type=int, default=0)
    parser.add_argument("--no-trim", action="store_true")
    parser.add_argument("--files", help="corpus globs, comma-separated")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.wave_frames, not args.no_trim, args.files)))
        return 0
    for count in (int(c) for c in args.chunks.split(",")):
        command = [sys.executable, __file__, "--worker", str(count)]
        command += ["--wave-frames", str(args.wave_frames)]
        command += ["--no-trim"] if args.no_trim else []
        command += ["--files", args.files] if args.files else []
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
        if completed.returncode:
            print(completed.stderr[-3000:], file=sys.stderr)
            return completed.returncode
        print(completed.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

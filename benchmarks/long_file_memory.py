"""Peak memory of preprocessing one long recording: whole-file decoding against streaming.

    python benchmarks/long_file_memory.py [--hours 2] [--out benchmarks/out]

Builds (once, cached under ``OUT/long_file/``) a recording of ``--hours`` hours of real read
speech: the corpus's long English files looped, 44.1 kHz stereo MP3 at 64 kbit/s, so decoding
also resamples and downmixes. Then, each in a fresh process, preprocesses it two ways and
reports wall seconds, chunks and the process's peak RSS:

1. ``whole-file``: faster-whisper's ``decode_audio`` into one array, peak normalization for
   VAD, Silero VAD over the whole array, then log-mel features per chunk (the usual in-memory way,
   as ``WhisperModel.transcribe`` and ``BatchedInferencePipeline`` hold a file);
2. ``streaming``: this project's ``preprocess.preprocess_file``: ``audio.spool`` (16-bit PCM
   to a local file, block by block), block-wise VAD and per-chunk slicing
   (``chunking.split_spooled``), then the same features.

Features are written to a scratch file in both, as the preprocessing step does.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
SOURCES = [
    "long/ljs_seven_wonders.flac",
    "long/ljs_fireside_chat.flac",
    "long/apollo11_8k.mp3",
    "long/sonnet_001.mp3",
    "short/jfk.flac",
]
"""Corpus recordings looped into the long file."""

OUTPUT_RATE = 44100
"""Sample rate of the built file, Hz (a common recorder rate, so decoding resamples)."""


def corpus_dir() -> Path:
    """``WHISPER_PIPELINE_CORPUS``, else ``../shared/corpus`` beside the repository."""
    return Path(os.environ.get("WHISPER_PIPELINE_CORPUS", REPOSITORY.parent / "shared/corpus"))


def build_long_file(hours: float, out: Path) -> Path:
    """Write (or reuse) ``out/long_file/speech_<hours>h.mp3``: corpus speech looped to length."""
    from whisper_pipeline.core import audio

    path = out / "long_file" / f"speech_{hours:g}h.mp3"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = []
    for name in SOURCES:
        with open(corpus_dir() / name, "rb") as handle:
            pieces.append(np.concatenate(list(audio.decode_pcm16(handle))))
    loop = np.concatenate(pieces)
    target = int(hours * 3600 * audio.SAMPLE_RATE)
    partial = path.with_suffix(".partial.mp3")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("mp3", rate=OUTPUT_RATE, layout="stereo")
        stream.bit_rate = 64000
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=OUTPUT_RATE)
        written, block = 0, audio.SAMPLE_RATE * 10
        while written < target:
            start = written % loop.shape[0]
            samples = loop[start : start + min(block, target - written)]
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = audio.SAMPLE_RATE
            for resampled in resampler.resample(frame):
                container.mux(stream.encode(resampled))
            written += samples.shape[0]
        for resampled in resampler.resample(None):
            container.mux(stream.encode(resampled))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


def whole_file(path: Path, features_out) -> tuple[float, int]:
    """Method 1; returns (audio seconds, chunks)."""
    from faster_whisper.audio import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor

    from whisper_pipeline.core import audio
    from whisper_pipeline.core.chunking import log_mel, pack_regions, speech_regions

    extractor = FeatureExtractor()
    waveform = decode_audio(str(path))
    regions = speech_regions(
        waveform,
        audio.peak_scale(waveform),
        block_s=waveform.shape[0] / audio.SAMPLE_RATE + 1,
    )
    chunks = 0
    for group in pack_regions(regions, 30 * audio.SAMPLE_RATE):
        chunk = np.concatenate([waveform[r["start"] : r["end"]] for r in group])
        features_out.write(log_mel(extractor, chunk).T.tobytes())
        chunks += 1
    return waveform.shape[0] / audio.SAMPLE_RATE, chunks


def streaming(path: Path, features_out) -> tuple[float, int]:
    """Method 2; returns (audio seconds, chunks)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from whisper_pipeline.core.preprocess import preprocess_file

    extractor = FeatureExtractor()
    with tempfile.TemporaryDirectory() as scratch, open(path, "rb") as handle:
        done = preprocess_file(
            handle,
            None,
            extractor,
            os.path.join(scratch, "audio.s16"),
            lambda _chunk, features: features_out.write(features.T.tobytes()),
        )
    if done.error:
        raise RuntimeError(done.error)
    return done.duration_s, done.chunks


METHODS = {"whole-file": whole_file, "streaming": streaming}


def worker(method: str, path: Path) -> None:
    """Run one method in this process and print its numbers as JSON."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as features_out:
        audio_s, chunks = METHODS[method](path, features_out)
    print(
        json.dumps(
            {
                "method": method,
                "audio_s": audio_s,
                "chunks": chunks,
                "wall_s": time.perf_counter() - started,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    """Build the long file, run each method in its own process, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks" / "out")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.path)
        return
    started = time.perf_counter()
    path = build_long_file(args.hours, args.out)
    print(
        f"{path} ({path.stat().st_size / 2**20:.0f} MiB) ready in "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print("| method | audio s | chunks | wall s | peak RSS (MiB) |\n|---|--:|--:|--:|--:|")
    for method in METHODS:
        completed = subprocess.run(
            [sys.executable, __file__, "--worker", method, "--path", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        print(
            f"| {method} | {row['audio_s']:.0f} | {row['chunks']} | {row['wall_s']:.1f} "
            f"| {row['peak_rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()

"""Preprocessing stage by stage: how much audio each stage handles per CPU second.

Runs the pipeline's own per-file steps (``core.preprocess.preprocess_file``'s chain) on every
file of an input set, one file at a time in this process, timing each stage separately:
``decode`` (``audio.spool``: FFmpeg decode, downmix, resample to 16 kHz, 16-bit PCM spool),
``vad`` (``chunking.speech_regions``: Silero VAD), ``chunk`` (packing regions into <=30 s chunks
and reading their samples back) and ``log-mel`` (``chunking.log_mel``). CPU seconds are the
process's (every thread: ONNX Runtime's and FFmpeg's too); the rate is audio seconds per CPU
second, so a stage that gets faster by using more threads does not look better than it is.

    python -m benchmarks.preprocess_stages [--inputs corpus,real-short,many-short] [--repeats 3]

Each set is run ``--repeats`` times after one warm-up file, in rounds of four modes: numpy's
BLAS on its default threads and faster-whisper's own Silero VAD session (as preprocessing steps
ran before ``core.preprocess.single_threaded_blas``), BLAS on one thread, then also VAD in calls
of ``vad.VAD_WINDOWS_PER_CALL`` windows, then also VAD's STFT by FFT (as they run now). The best
repeat of each stage is reported (the least disturbed by other work on the machine), with the
ratio of audio per CPU second of the last mode against the first, and a check that every mode
found the same chunks.
"""

import argparse
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import DEFAULT_OUT, INPUT_SETS, cpu_model, load_input_set
from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import CHUNK_LENGTH_S, log_mel, pack_regions, speech_regions
from whisper_pipeline.core.vad import VAD_WINDOWS_PER_CALL, configure_vad

STAGES = ("decode", "vad", "chunk", "log-mel")


class Clock:
    """Accumulates wall and process CPU seconds per stage."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def time(self, stage: str, work):
        """Run ``work()`` and charge its wall and CPU seconds to ``stage``; returns its result."""
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        self.wall[stage] += time.perf_counter() - wall
        self.cpu[stage] += time.process_time() - cpu
        return result


def preprocess(
    path: str, extractor, spool_path: str, clock: Clock
) -> tuple[float, list[tuple[int, int]]]:
    """One file through every stage.

    Returns:
        The decoded seconds, and each chunk's first sample and end sample (exclusive).
    """
    with open(path, "rb") as stream:
        try:
            decoded = clock.time("decode", lambda: audio.spool(stream, spool_path))
        except audio.AudioError:
            return 0.0, []
    regions = clock.time("vad", lambda: speech_regions(decoded.samples, decoded.scale()))

    def chunk_audio():
        groups = pack_regions(regions, CHUNK_LENGTH_S * audio.SAMPLE_RATE)
        pieces = [[decoded.samples[r["start"] : r["end"]] for r in group] for group in groups]
        chunks = [
            np.concatenate(p).astype(np.float32) * np.float32(audio.PCM16_SCALE) for p in pieces
        ]
        return groups, chunks

    groups, chunks = clock.time("chunk", chunk_audio)
    for samples in chunks:
        clock.time("log-mel", lambda samples=samples: log_mel(extractor, samples))
    return decoded.duration_s, [(group[0]["start"], group[-1]["end"]) for group in groups]


MODES = {
    # name: (BLAS threads (None: numpy's default), VAD windows per call (None: faster-whisper's
    # session), VAD's STFT by FFT)
    "before: default BLAS threads, faster-whisper's VAD session": (None, None, False),
    "one BLAS thread": (1, None, False),
    f"+ VAD calls of {VAD_WINDOWS_PER_CALL} windows": (1, VAD_WINDOWS_PER_CALL, False),
    "now: + VAD's STFT by numpy's FFT": (1, VAD_WINDOWS_PER_CALL, True),
}


def table(best: dict[str, tuple[float, float]], seconds: float) -> list[str]:
    """Markdown rows of one mode's best stages."""
    total_cpu = sum(cpu for cpu, _ in best.values())
    total_wall = sum(wall for _, wall in best.values())
    rows = [
        "| stage | CPU s | wall s | audio s per CPU s | share of CPU |",
        "|---|--:|--:|--:|--:|",
    ]
    for stage in STAGES:
        cpu, wall = best[stage]
        rows.append(
            f"| {stage} | {cpu:.2f} | {wall:.2f} | {seconds / cpu:.0f} | {cpu / total_cpu:.0%} |"
        )
    rows.append(
        f"| **all** | {total_cpu:.2f} | {total_wall:.2f} | {seconds / total_cpu:.0f} | 100% |"
    )
    return rows


def main() -> None:
    """Time every stage on each input set, in every mode, and print the tables."""
    from faster_whisper.feature_extractor import FeatureExtractor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default="corpus,real-short,many-short")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    extractor = FeatureExtractor()  # tiny.en's: 80 mel bins
    print(f"{cpu_model()}, {os.cpu_count()} cores; best of {args.repeats} repeats\n")
    with tempfile.TemporaryDirectory(prefix="preprocess_stages_") as scratch:
        spool_path = os.path.join(scratch, "audio.s16")
        for name in args.inputs.split(","):
            assert name in INPUT_SETS, name
            inputs = load_input_set(name, None, 120, DEFAULT_OUT)
            preprocess(inputs[0].path, extractor, spool_path, Clock())  # warm-up
            best: dict[str, dict[str, tuple[float, float]]] = {mode: {} for mode in MODES}
            found: dict[str, list] = {}
            for _ in range(args.repeats):
                for mode, (blas_threads, vad_windows, fft) in MODES.items():
                    configure_vad(vad_windows, fft)
                    clock, seconds, chunks = Clock(), 0.0, []
                    with threadpool_limits(limits=blas_threads, user_api="blas"):
                        for item in inputs:
                            decoded_s, bounds = preprocess(item.path, extractor, spool_path, clock)
                            seconds += decoded_s
                            chunks.append(bounds)
                    found[mode] = chunks
                    for stage in STAGES:
                        kept = best[mode].get(stage)
                        if kept is None or clock.cpu[stage] < kept[0]:
                            best[mode][stage] = (clock.cpu[stage], clock.wall[stage])
            count = sum(len(bounds) for bounds in chunks)
            same = all(other == chunks for other in found.values())
            print(f"### {name}: {len(inputs)} files, {seconds:.0f} s of audio, {count} chunks "
                  f"({'the same' if same else 'NOT the same'} in every mode)\n")  # fmt: skip
            totals = {}
            for mode in MODES:
                print(f"{mode}:\n")
                print("\n".join(table(best[mode], seconds)) + "\n")
                totals[mode] = sum(cpu for cpu, _ in best[mode].values())
            before, now = list(MODES)[0], list(MODES)[-1]
            print(f"audio per CPU second, now against before: "
                  f"{totals[before] / totals[now]:.2f}x\n")  # fmt: skip


if __name__ == "__main__":
    main()

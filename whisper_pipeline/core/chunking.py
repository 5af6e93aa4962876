"""VAD-split a waveform into <=30 s speech chunks and compute their log-mel features.

The split follows faster-whisper's batched-mode recipe (``BatchedInferencePipeline.transcribe``):
Silero VAD with ``max_speech_duration_s=30`` and ``min_silence_duration_ms=160``, then
consecutive speech regions, silence removed, are packed into chunks of at most 30 s. Each chunk
keeps its speech regions so chunk-local times map back to file times.

Long recordings are VAD-scanned in blocks of ``VAD_BLOCK_S`` (with context either side), and
chunk audio is sliced from the (spooled) samples one chunk at a time, so memory does not grow
with a file's length.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

from whisper_pipeline.core.audio import PCM16_SCALE, SAMPLE_RATE, SpooledAudio
from whisper_pipeline.core.vad import ensure_configured

CHUNK_LENGTH_S = 30
"""Whisper's fixed input window in seconds (OpenAI Whisper ``audio.py``: ``CHUNK_LENGTH = 30``)."""

HOP_LENGTH = 160
"""STFT hop in samples: 10 ms at 16 kHz, so 100 feature frames per second (Whisper)."""

N_FRAMES = CHUNK_LENGTH_S * SAMPLE_RATE // HOP_LENGTH
"""Frames in Whisper's fixed 30 s encoder window: 3000."""

VAD_BLOCK_S = 300
"""Audio (seconds) one Silero VAD pass keeps regions for. faster-whisper's VAD copies and
windows its whole input, so its memory grows with the audio one pass scans (this plus
``VAD_CONTEXT_S`` either side); ``benchmarks/RESULTS.md``, "Memory". Files up to this long get
exactly faster-whisper's single-pass regions."""

VAD_CONTEXT_S = 35
"""Audio (seconds) VAD also scans before and after each block. Regions are kept by the block
their start falls in, so a region crossing a block end is seen whole (VAD caps regions at
30 s, plus 0.4 s padding) and Silero's state has settled when a block's own audio begins."""


@dataclass(frozen=True)
class SpeechChunk:
    """One <=30 s stretch of speech cut from a file.

    Attributes:
        index: Position of the chunk in its file, from 0.
        audio: Speech samples with the silences between speech regions removed, shape
            ``(n_samples,)``, float32, 16 kHz.
        speech_starts: Start sample (in the file, 16 kHz) of each speech region in the chunk.
        speech_ends: End sample (exclusive) of each speech region; same length as starts.
    """

    index: int
    audio: np.ndarray
    speech_starts: tuple[int, ...]
    speech_ends: tuple[int, ...]

    @property
    def duration_s(self) -> float:
        """Speech in the chunk, in seconds."""
        return self.audio.shape[0] / SAMPLE_RATE

    @property
    def start_s(self) -> float:
        """File time of the chunk's first speech sample, in seconds."""
        return self.speech_starts[0] / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        """File time just after the chunk's last speech sample, in seconds."""
        return self.speech_ends[-1] / SAMPLE_RATE


def default_vad_options() -> VadOptions:
    """VAD parameters of faster-whisper's batched pipeline (``BatchedInferencePipeline``)."""
    return VadOptions(max_speech_duration_s=CHUNK_LENGTH_S, min_silence_duration_ms=160)


def speech_regions(
    samples: np.ndarray,
    scale: float = 1.0,
    vad_options: VadOptions | None = None,
    block_s: float = VAD_BLOCK_S,
) -> list[dict]:
    """Speech regions of a recording, found by Silero VAD block by block.

    Each block is scanned with ``VAD_CONTEXT_S`` of audio either side and keeps the regions
    that start inside it, trimmed so they never overlap the previous block's last region. A
    recording no longer than ``block_s`` gets exactly faster-whisper's single-pass regions.

    Args:
        samples: Mono samples, shape ``(n_samples,)``, 16 kHz: a float32 array, or int16
            ``audio.PcmFile`` from ``audio.spool``; only one block is read and converted to
            float at a time.
        scale: Factor from ``samples`` to VAD input in [-1, 1] (e.g. ``SpooledAudio.scale()``,
            peak normalization).
        vad_options: Silero VAD parameters; defaults to ``default_vad_options()``.
        block_s: Audio (seconds) each VAD pass keeps regions for.

    Returns:
        ``{"start": int, "end": int}`` sample ranges in file samples, in time order, not
        overlapping, each at most ``max_speech_duration_s`` long.
    """
    ensure_configured()  # small VAD calls, STFT by FFT: core/vad.py
    options = vad_options or default_vad_options()
    block = int(block_s * SAMPLE_RATE)
    context = VAD_CONTEXT_S * SAMPLE_RATE
    total = samples.shape[0]
    regions: list[dict] = []
    for start in range(0, total, block):
        end = min(start + block, total)
        scan_start, scan_end = max(0, start - context), min(total, end + context)
        scanned = np.asarray(samples[scan_start:scan_end], dtype=np.float32) * np.float32(scale)
        for region in get_speech_timestamps(scanned, options):
            first, last = region["start"] + scan_start, region["end"] + scan_start
            if not start <= first < end:
                continue
            if regions:
                first = max(first, regions[-1]["end"])
            if last > first:
                regions.append({"start": first, "end": last})
    return regions


def split_speech(
    samples: np.ndarray,
    scale: float = 1.0,
    vad_options: VadOptions | None = None,
    block_s: float = VAD_BLOCK_S,
    vad_scale: float | None = None,
) -> Iterator[SpeechChunk]:
    """Find speech with Silero VAD and pack it into chunks of at most 30 s, one at a time.

    The chunks keep the recording's own level (``scale``), as faster-whisper feeds Whisper,
    whose log-mel features are not gain-invariant; only the VAD's input is normalized
    (``vad_scale``: Silero VAD misses very quiet speech); docs/ARCHITECTURE.md, "core/chunking.py".

    Args:
        samples: Mono samples, shape ``(n_samples,)``, 16 kHz, float32 or int16 (see
            ``speech_regions``).
        scale: Factor from ``samples`` to the chunks' float audio (``audio.PCM16_SCALE`` for
            int16 samples at their recorded level).
        vad_options: Silero VAD parameters; defaults to ``default_vad_options()``.
        block_s: Longest stretch VAD scans at once, in seconds.
        vad_scale: Factor from ``samples`` to VAD input (``SpooledAudio.scale()``,
            ``audio.peak_scale``); ``None`` uses ``scale``.

    Yields:
        The chunks in time order (none when VAD finds no speech); each chunk's audio is sliced
        from ``samples`` when it is yielded.
    """
    vad_scale = scale if vad_scale is None else vad_scale
    regions = speech_regions(samples, vad_scale, vad_options, block_s)
    for index, group in enumerate(pack_regions(regions, CHUNK_LENGTH_S * SAMPLE_RATE)):
        pieces = [np.asarray(samples[r["start"] : r["end"]], dtype=np.float32) for r in group]
        yield SpeechChunk(
            index=index,
            audio=np.concatenate(pieces) * np.float32(scale),
            speech_starts=tuple(int(r["start"]) for r in group),
            speech_ends=tuple(int(r["end"]) for r in group),
        )


def split_spooled(decoded: SpooledAudio, block_s: float = VAD_BLOCK_S) -> Iterator[SpeechChunk]:
    """The pipeline's split of a spooled file: chunks at the recorded level, VAD peak-normalized.

    ``split_speech`` with ``audio.PCM16_SCALE`` for the chunks and ``decoded.scale()`` for VAD.

    Args:
        decoded: A file spooled by ``audio.spool``.
        block_s: Longest stretch VAD scans at once, in seconds.
    """
    return split_speech(decoded.samples, PCM16_SCALE, block_s=block_s, vad_scale=decoded.scale())


def pack_regions(regions: list[dict], max_samples: int) -> list[list[dict]]:
    """Pack consecutive speech regions into groups of at most ``max_samples`` speech samples.

    Same packing as faster-whisper's ``vad.collect_chunks``, written out because that function's
    metadata leaves out the region that opens each new chunk (faster-whisper 1.1-1.2), which
    would shift every timestamp after the first chunk.

    Args:
        regions: ``{"start": int, "end": int}`` sample ranges in time order, each at most
            ``max_samples`` long (VAD's ``max_speech_duration_s`` guarantees it).
        max_samples: Largest total of ``end - start`` in a group.

    Returns:
        Groups of regions, in time order; empty for no regions.
    """
    groups: list[list[dict]] = []
    current: list[dict] = []
    length = 0
    for region in regions:
        size = region["end"] - region["start"]
        if current and length + size > max_samples:
            groups.append(current)
            current, length = [], 0
        current.append(region)
        length += size
    if current:
        groups.append(current)
    return groups


def chunk_time_map(speech_starts: list[int], speech_ends: list[int]) -> SpeechTimestampsMap:
    """Map chunk-local times (seconds from the chunk's first speech sample) to file times.

    Built from the chunk's own speech regions, faster-whisper's ``SpeechTimestampsMap`` adds back
    the silence before each region: ``get_original_time(t)`` is the file time in seconds.
    """
    regions = [{"start": s, "end": e} for s, e in zip(speech_starts, speech_ends, strict=True)]
    return SpeechTimestampsMap(regions, SAMPLE_RATE)


def log_mel(extractor: FeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features of one chunk, as faster-whisper's batched pipeline computes them.

    Args:
        extractor: The model's feature extractor (80 mel bins, 128 for large-v3).
        audio: Chunk waveform, shape ``(n_samples,)``, float32, 16 kHz, at most 30 s.

    Returns:
        Features, shape ``(n_mels, n_samples // 160)``, float32. Padding to the model's 3000
        frames happens at batch time (``batching.pad_features``).
    """
    return extractor(audio)[..., :-1]

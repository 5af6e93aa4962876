"""VAD-split a waveform into <=30 s speech chunks and compute their log-mel features.

The split follows faster-whisper's batched-mode recipe (``BatchedInferencePipeline.transcribe``):
Silero VAD with ``max_speech_duration_s=30`` and ``min_silence_duration_ms=160``, then
consecutive speech regions, silence removed, are packed into chunks of at most 30 s. Each chunk
keeps its speech regions so chunk-local times map back to file times.
"""

from dataclasses import dataclass

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

from whisper_pipeline.core.audio import SAMPLE_RATE

CHUNK_LENGTH_S = 30
"""Whisper's fixed input window in seconds (OpenAI Whisper ``audio.py``: ``CHUNK_LENGTH = 30``)."""

HOP_LENGTH = 160
"""STFT hop in samples: 10 ms at 16 kHz, so 100 feature frames per second (Whisper)."""


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


def split_speech(audio: np.ndarray, vad_options: VadOptions | None = None) -> list[SpeechChunk]:
    """Find speech with Silero VAD and pack it into chunks of at most 30 s.

    Args:
        audio: Mono waveform, shape ``(n_samples,)``, float32, 16 kHz.
        vad_options: Silero VAD parameters; defaults to ``default_vad_options()``.

    Returns:
        The chunks in time order; an empty list when VAD finds no speech.
    """
    regions = get_speech_timestamps(audio, vad_options or default_vad_options())
    chunks = []
    for index, group in enumerate(pack_regions(regions, CHUNK_LENGTH_S * SAMPLE_RATE)):
        chunks.append(
            SpeechChunk(
                index=index,
                audio=np.concatenate([audio[r["start"] : r["end"]] for r in group]),
                speech_starts=tuple(int(r["start"]) for r in group),
                speech_ends=tuple(int(r["end"]) for r in group),
            )
        )
    return chunks


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

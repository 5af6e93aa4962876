"""Find, fingerprint, probe and decode audio files.

Decoding goes through faster-whisper's PyAV-based ``decode_audio`` (the same decoder the model's
own ``transcribe`` uses), so any container and codec FFmpeg reads is accepted.
"""

import hashlib
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
from faster_whisper.audio import decode_audio

SAMPLE_RATE = 16000
"""Whisper's input rate in Hz (OpenAI Whisper ``audio.py``: ``SAMPLE_RATE = 16000``)."""

HASH_BLOCK_BYTES = 1 << 20


class AudioError(Exception):
    """A file could not be read as audio (no audio stream, corrupt data, no samples)."""


@dataclass(frozen=True)
class ProbeResult:
    """Container facts read from a file's header, before any decoding.

    Attributes:
        duration_s: Duration in seconds from the container or stream header; ``None`` when the
            container does not state it (raw ADTS AAC, some streamed MP3).
        sample_rate: Sample rate of the first audio stream in Hz.
        channels: Number of channels of the first audio stream (>= 1).
        codec: FFmpeg codec name (not the decoder name): ``pcm_s16le``, ``mp3``, ``opus``...
    """

    duration_s: float | None
    sample_rate: int
    channels: int
    codec: str


def fingerprint(stream: BinaryIO) -> str:
    """Hash a file's bytes.

    Args:
        stream: A binary file object positioned at its start; read to the end in 1 MiB blocks.

    Returns:
        The SHA-256 hex digest (64 characters) of the content.
    """
    digest = hashlib.sha256()
    while block := stream.read(HASH_BLOCK_BYTES):
        digest.update(block)
    return digest.hexdigest()


def probe(stream: BinaryIO) -> ProbeResult:
    """Read duration, sample rate, channels and codec from a file's first audio stream.

    Args:
        stream: A seekable binary file object.

    Returns:
        The header facts of the first audio stream.

    Raises:
        AudioError: The bytes are not a container FFmpeg recognises, hold no audio stream, or
            the stream claims zero channels or a zero sample rate.
    """
    try:
        with av.open(stream, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream in container")
            audio_stream = container.streams.audio[0]
            context = audio_stream.codec_context
            channels = context.channels
            sample_rate = context.sample_rate
            if not channels:
                raise AudioError("audio stream declares zero channels")
            if not sample_rate:
                raise AudioError("audio stream declares a zero sample rate")
            duration = None
            if audio_stream.duration is not None and audio_stream.time_base is not None:
                duration = float(audio_stream.duration * audio_stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            return ProbeResult(
                duration_s=duration,
                sample_rate=int(sample_rate),
                channels=int(channels),
                codec=context.codec.canonical_name,
            )
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as error:
        raise AudioError(f"not readable as audio: {error}") from error


def decode(stream: BinaryIO) -> np.ndarray:
    """Decode, downmix to mono and resample to 16 kHz.

    Frames FFmpeg rejects are skipped (faster-whisper's ``_ignore_invalid_frames``), so one bad
    frame does not lose the file.

    Args:
        stream: A seekable binary file object.

    Returns:
        Mono waveform, shape ``(n_samples,)``, dtype float32, range [-1, 1], at ``SAMPLE_RATE``.

    Raises:
        AudioError: FFmpeg cannot open or decode the stream, or decoding yields no samples.
    """
    try:
        audio = decode_audio(stream, sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, ValueError, IndexError) as error:
        raise AudioError(f"decode failed: {error}") from error
    if audio.size == 0:
        raise AudioError("decoding yielded no samples")
    return audio


def normalize_peak(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale a waveform so its largest absolute sample is ``peak``.

    Whisper's log-mel frontend is almost gain-invariant, but Silero VAD is not for very quiet
    recordings; peak normalization lifts them without clipping.

    Args:
        audio: Waveform, shape ``(n_samples,)``, float32.
        peak: Target peak in full-scale units (0, 1].

    Returns:
        A float32 array of the same shape; all-zero input is returned unchanged.
    """
    current = float(np.max(np.abs(audio))) if audio.size else 0.0
    if current == 0.0:
        return audio
    return (audio * (peak / current)).astype(np.float32, copy=False)

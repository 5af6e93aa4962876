"""Find, fingerprint, probe and decode audio files.

Decoding follows faster-whisper's PyAV-based ``decode_audio`` (the decoder the model's own
``transcribe`` uses, with its frame helpers), so any container and codec FFmpeg reads is
accepted. It streams: ``spool`` writes 16-bit PCM to a local file block by block, so a two-hour
recording is decoded in bounded memory and read back a slice at a time.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
from faster_whisper.audio import _group_frames, _ignore_invalid_frames, _resample_frames

SAMPLE_RATE = 16000
"""Whisper's input rate in Hz (OpenAI Whisper ``audio.py``: ``SAMPLE_RATE = 16000``)."""

HASH_BLOCK_BYTES = 1 << 20

DECODE_GROUP_SAMPLES = 500_000
"""Source samples FFmpeg frames are grouped into before resampling (faster-whisper's value)."""

NO_SAMPLES = "no audio in the file (decoding yielded no samples)"
"""Reason of a file that opens as audio but decodes to nothing."""

PCM16_SCALE = 1 / 32768
"""Full-scale float per 16-bit PCM step: FFmpeg's s16 to flt conversion (and faster-whisper's)."""


class AudioError(Exception):
    """A file could not be read as audio (no audio stream, corrupt data, no samples).

    Its message is the reason users see (``audio_files.error``, the run's warnings): plain words
    first, FFmpeg's detail after them, never FFmpeg's error number (``_ffmpeg_reason``).
    """


def _ffmpeg_detail(error: Exception) -> str:
    """FFmpeg's text for ``error`` without its error number or file name (``[Errno 10949...]``)."""
    if isinstance(error, av.error.FFmpegError) and error.strerror:
        detail = str(error.strerror)
        return detail[:1].lower() + detail[1:]
    return f"{type(error).__name__}: {error}"


def _ffmpeg_reason(error: Exception, opened: bool) -> str:
    """A plain reason for an error PyAV raised while opening (or, once ``opened``, decoding).

    Example: ``not an audio file (not readable as audio: invalid data found when processing
    input)`` instead of ``[Errno 1094995529] Invalid data found when processing input: '<none>'``.
    """
    detail = _ffmpeg_detail(error)
    if not opened:
        if isinstance(error, av.error.InvalidDataError | UnicodeDecodeError):
            return f"not an audio file (not readable as audio: {detail})"
        return f"not readable as audio ({detail})"
    if isinstance(error, av.error.DecoderNotFoundError):
        return f"unsupported audio codec (decode failed: {detail})"
    if isinstance(error, av.error.InvalidDataError):
        return f"corrupt audio data (decode failed: {detail})"
    return f"audio could not be decoded (decode failed: {detail})"


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


def copy_fingerprinted(stream: BinaryIO, sink: BinaryIO) -> str:
    """Copy a file's bytes to ``sink`` and hash them on the way.

    What is decoded from ``sink`` afterwards is then exactly what was hashed, even if the
    source is replaced meanwhile (a landing folder being re-uploaded to).

    Args:
        stream: A binary file object positioned at its start; read to the end in 1 MiB blocks.
        sink: A writable binary file object (a local scratch file).

    Returns:
        The SHA-256 hex digest (64 characters) of the bytes copied, as ``fingerprint``.
    """
    digest = hashlib.sha256()
    while block := stream.read(HASH_BLOCK_BYTES):
        digest.update(block)
        sink.write(block)
    sink.flush()
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
                raise AudioError("broken audio header (the stream declares zero channels)")
            if not sample_rate:
                raise AudioError("broken audio header (the stream declares a zero sample rate)")
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
        raise AudioError(_ffmpeg_reason(error, opened=False)) from error


DECODE_PROBE_OPTIONS = {"probesize": "32768"}
"""FFmpeg demuxer options of a decode's first try: read at most 32 KiB (FFmpeg's default:
5 MB) to identify the format and its streams. Decoding needs no more, as every frame carries
its own rate and layout; ``probe`` keeps the default, since it reports the container's
duration. A file this try cannot decode, or decodes to nothing, is decoded again with FFmpeg's
defaults (``decode_pcm16``). Cost and equivalence: ``benchmarks/RESULTS.md``, "Preprocessing
per stage"."""


def decode_pcm16(stream: BinaryIO) -> Iterator[np.ndarray]:
    """Decode, downmix to mono and resample to 16 kHz, block by block.

    Frames FFmpeg rejects are skipped (faster-whisper's ``_ignore_invalid_frames``), so one bad
    frame does not lose the file. Memory is bounded by one group of ``DECODE_GROUP_SAMPLES``
    source samples, whatever the file's length.

    The first try opens the file with ``DECODE_PROBE_OPTIONS``. If it fails or yields no samples
    before its first block, the file is decoded from the start again with FFmpeg's default
    options, as faster-whisper's ``decode_audio`` opens it, and that try's error is the one
    raised. A failure after the first block is raised as it is (the blocks already yielded
    cannot be taken back).

    Unlike faster-whisper's ``decode_audio`` this does not call ``gc.collect()`` after each
    file: that worked around resamplers kept alive by reference cycles in older PyAV
    (faster-whisper issue #390, PyAV issue #1429, closed in 2024); the installed PyAV frees
    them by reference counting (``test_audio`` checks it with the collector off).

    Args:
        stream: A seekable binary file object; a second try seeks it back to where it was.

    Yields:
        Consecutive mono blocks, shape ``(n,)``, dtype int16, at ``SAMPLE_RATE``.

    Raises:
        AudioError: FFmpeg cannot open or decode the stream.
    """
    start = stream.tell()
    blocks = _decode_pcm16(stream, DECODE_PROBE_OPTIONS)
    try:
        first = next(blocks, None)
    except AudioError:
        first = None
    if first is None:
        stream.seek(start)
        yield from _decode_pcm16(stream, {})
        return
    yield first
    yield from blocks


def _decode_pcm16(stream: BinaryIO, options: dict[str, str]) -> Iterator[np.ndarray]:
    """``decode_pcm16``'s decoding, opening the stream with FFmpeg demuxer ``options``.

    ``{}`` opens it with FFmpeg's defaults.
    """
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    opened = False
    try:
        with av.open(stream, mode="r", metadata_errors="ignore", options=options) as container:
            opened = True
            frames = _ignore_invalid_frames(container.decode(audio=0))
            frames = _group_frames(frames, DECODE_GROUP_SAMPLES)
            for frame in _resample_frames(frames, resampler):
                yield frame.to_ndarray().reshape(-1)
    except (av.error.FFmpegError, ValueError, IndexError) as error:
        raise AudioError(_ffmpeg_reason(error, opened)) from error
    finally:
        del resampler


def decode(stream: BinaryIO) -> np.ndarray:
    """Decode a whole file into memory (short files, tests); see ``spool`` for long ones.

    Args:
        stream: A seekable binary file object.

    Returns:
        Mono waveform, shape ``(n_samples,)``, dtype float32, range [-1, 1], at ``SAMPLE_RATE``;
        the same samples as faster-whisper's ``decode_audio``.

    Raises:
        AudioError: FFmpeg cannot open or decode the stream, or decoding yields no samples.
    """
    blocks = list(decode_pcm16(stream))
    if not blocks or not sum(block.size for block in blocks):
        raise AudioError(NO_SAMPLES)
    return np.concatenate(blocks).astype(np.float32) * np.float32(PCM16_SCALE)


class PcmFile:
    """Mono 16-bit PCM samples in a local file, read slice by slice.

    Slices are plain file reads rather than a memory map, so samples already read do not stay
    in the process's resident set (a map's touched pages count towards RSS until unmapped).

    Args:
        path: The raw PCM file (native-endian int16, no header).
        n_samples: Samples in the file.
    """

    dtype = np.dtype(np.int16)

    def __init__(self, path: str, n_samples: int):
        self.path, self.n_samples = path, n_samples

    @property
    def shape(self) -> tuple[int]:
        """``(n_samples,)``, like a 1-D array."""
        return (self.n_samples,)

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: slice) -> np.ndarray:
        """Samples ``index`` (a slice with step 1) as an int16 array of shape ``(n,)``.

        Raises:
            TypeError: ``index`` is not a slice with step 1.
        """
        if not isinstance(index, slice):
            raise TypeError("PcmFile supports slices only")
        start, stop, step = index.indices(self.n_samples)
        if step != 1:
            raise TypeError("PcmFile supports slices with step 1 only")
        count = max(0, stop - start)
        return np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * 2)


@dataclass(frozen=True)
class SpooledAudio:
    """A decoded file held as 16-bit PCM in a local file.

    Attributes:
        samples: Mono samples, 16 kHz, int16, shape ``(n_samples,)``; sliced like an array
            (``samples[a:b]``) with each slice read from the file.
        peak: Largest absolute sample, in int16 steps (0 to 32768).
    """

    samples: PcmFile
    peak: int

    @property
    def duration_s(self) -> float:
        """Decoded duration in seconds."""
        return self.samples.shape[0] / SAMPLE_RATE

    def scale(self, peak: float = 0.95) -> float:
        """Factor turning int16 samples into float samples peak-normalized to ``peak``.

        Same result as ``normalize_peak(decode(...), peak)``: the int16 to float step
        (``PCM16_SCALE``) times the peak gain; silence gets the plain int16 to float step.
        This is the VAD's input scale (``chunking.split_speech``).
        """
        if self.peak == 0:
            return PCM16_SCALE
        return peak / self.peak


def spool(stream: BinaryIO, path: str) -> SpooledAudio:
    """Decode a file to 16 kHz mono 16-bit PCM at ``path`` (a local file), in bounded memory.

    Args:
        stream: A seekable binary file object (local or fsspec).
        path: Local file to write; overwritten. The caller deletes it when done.

    Returns:
        The spooled samples and their peak.

    Raises:
        AudioError: FFmpeg cannot open or decode the stream, or decoding yields no samples.
    """
    peak = 0
    n_samples = 0
    with open(path, "wb") as out:
        for block in decode_pcm16(stream):
            if block.size:
                peak = max(peak, int(block.max()), -int(block.min()))
                n_samples += block.size
                out.write(block.tobytes())
    if n_samples == 0:
        raise AudioError(NO_SAMPLES)
    return SpooledAudio(PcmFile(path, n_samples), peak)


def peak_scale(audio: np.ndarray, peak: float = 0.95) -> float:
    """Factor that puts a waveform's largest absolute sample at ``peak`` (1.0 for silence).

    Silero VAD is not gain-invariant: very quiet recordings need lifting before VAD, and
    peak normalization lifts them without clipping. Whisper gets the recorded level
    (``chunking.split_speech``).

    Args:
        audio: Waveform, shape ``(n_samples,)``, float32.
        peak: Target peak in full-scale units (0, 1].
    """
    current = float(np.max(np.abs(audio))) if audio.size else 0.0
    return peak / current if current else 1.0


def normalize_peak(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale a waveform so its largest absolute sample is ``peak`` (``peak_scale``).

    Args:
        audio: Waveform, shape ``(n_samples,)``, float32.
        peak: Target peak in full-scale units (0, 1].

    Returns:
        A float32 array of the same shape; all-zero input is returned unchanged.
    """
    scale = peak_scale(audio, peak)
    if scale == 1.0:
        return audio
    return (audio * scale).astype(np.float32, copy=False)

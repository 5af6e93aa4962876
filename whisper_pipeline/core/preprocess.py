"""One audio file through the pipeline's preprocessing: decode, truncation check, VAD, log-mel.

The single place the per-file steps are chained, so the pipeline's preprocessing step, the
benchmarks and the tests prepare a file the same way: ``audio.spool`` decodes it to a local
16-bit PCM file, a file much shorter than its header declares is rejected as truncated,
``chunking.split_spooled`` cuts its speech into <=30 s chunks and ``chunking.log_mel`` computes
each chunk's features. Memory does not grow with the file's length.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor
from threadpoolctl import threadpool_limits

from whisper_pipeline.core import audio
from whisper_pipeline.core.chunking import SpeechChunk, log_mel, split_spooled
from whisper_pipeline.core.schema import STATUS_FAILED, STATUS_NO_SPEECH, STATUS_OK

TRUNCATION_RATIO = 0.9
"""A file decoding to less than this share of its header's duration (less
``TRUNCATION_SLACK_S``) is truncated. On the shared corpus the lowest ratio for a whole file is
0.958 (raw ADTS AAC, whose header duration is a bitrate estimate)."""

TRUNCATION_SLACK_S = 0.5
"""Seconds a decoded file may fall short of ``TRUNCATION_RATIO`` of its declared duration: an
absolute allowance on top of the ratio, which matters only for clips of a few seconds, where a
fraction of a second of difference between header and decoded length exceeds the ratio."""

ChunkSink = Callable[[SpeechChunk, np.ndarray], None]
"""Called with each speech chunk and its log-mel features, shape ``(n_mels, n_frames)``."""


@dataclass(frozen=True)
class PreprocessedFile:
    """Outcome of preprocessing one file.

    Attributes:
        duration_s: Decoded duration in seconds; ``None`` when the file could not be decoded.
        speech_s: Speech found by VAD, in seconds (0 for a failed file).
        chunks: Speech chunks passed to the sink.
        status: ``ok``, ``no_speech`` or ``failed`` (``core.schema``).
        error: Why the file failed (``audio.AudioError``'s message, or the truncation); empty
            otherwise.
    """

    duration_s: float | None
    speech_s: float
    chunks: int
    status: str
    error: str


def single_threaded_blas() -> threadpool_limits:
    """A context in which numpy's BLAS (OpenBLAS) runs on the calling thread only.

    Preprocessing's one BLAS call, the log-mel filter bank's matrix product, is small, and
    OpenBLAS's worker threads spin after each call: on the corpus, one preprocessing process
    took 6.0 CPU s with its default threads and 3.4 s with one, in the same 3.4-3.5 s of wall
    time (``benchmarks/RESULTS.md``, "Preprocessing per stage"); the spinning also took cores
    from the other shards' steps. Preprocessing runs in parallel across shards instead, one
    step per core. ``threadpoolctl`` sets the limit at run time, as the library is already
    loaded (by the forkserver's imports, say) when a step starts.
    """
    return threadpool_limits(limits=1, user_api="blas")


def changed_content(staged_sha256: str, decoded_sha256: str) -> PreprocessedFile:
    """The ``failed`` outcome of a file whose bytes changed after ``audio_manifest`` hashed it.

    Its result must not be cached under the staged hash (the cache is keyed by content), so it
    is not decoded at all; the changed landing folder makes the next run stage the new bytes.
    """
    error = (
        f"content changed after staging (SHA-256 {staged_sha256[:12]}... when staged,"
        f" {decoded_sha256[:12]}... when read for decoding): not transcribed; the next run of"
        " the partition stages the new content"
    )
    return PreprocessedFile(None, 0.0, 0, STATUS_FAILED, error)


def is_truncated(duration_s: float, declared_duration_s: float | None) -> bool:
    """Whether a decoded duration is too short for the header's (``TRUNCATION_RATIO``)."""
    if not declared_duration_s:
        return False
    return duration_s < TRUNCATION_RATIO * declared_duration_s - TRUNCATION_SLACK_S


def preprocess_file(
    stream: BinaryIO,
    declared_duration_s: float | None,
    extractor: FeatureExtractor,
    spool_path: str,
    on_chunk: ChunkSink,
) -> PreprocessedFile:
    """Decode, check, VAD-split and featurize one file, handing each chunk to ``on_chunk``.

    Args:
        stream: The file, a seekable binary file object (local or fsspec); read only while
            decoding.
        declared_duration_s: Duration the header declares (``audio.probe``), or ``None`` when
            unknown (no truncation check).
        extractor: The model's feature extractor.
        spool_path: Local scratch file for the decoded samples; overwritten, and left for the
            caller to delete (one path can serve every file in turn).
        on_chunk: Called with each chunk, in time order, and its log-mel features; not called
            for a failed file.

    Returns:
        The outcome: ``failed`` with the reason when the file cannot be decoded, decodes to no
        samples or is truncated, ``no_speech`` when VAD finds none, else ``ok``.
    """
    try:
        decoded = audio.spool(stream, spool_path)
    except audio.AudioError as error:
        return PreprocessedFile(None, 0.0, 0, STATUS_FAILED, str(error))
    duration = decoded.duration_s
    if is_truncated(duration, declared_duration_s):
        error = f"truncated: decoded {duration:.2f} s of the {declared_duration_s:.2f} s declared"
        return PreprocessedFile(duration, 0.0, 0, STATUS_FAILED, error)
    speech_s = 0.0
    chunks = 0
    for chunk in split_spooled(decoded):
        on_chunk(chunk, log_mel(extractor, chunk.audio))
        speech_s += chunk.duration_s
        chunks += 1
    status = STATUS_OK if speech_s else STATUS_NO_SPEECH
    return PreprocessedFile(duration, speech_s, chunks, status, "")

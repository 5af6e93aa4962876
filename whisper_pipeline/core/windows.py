"""A window of one chunk, its decoded row, and the typed outcomes of decoding a window.

A job's outcome is one small frozen type per kind: ``Kept`` (text for the chunk), ``Failed``
(the model raised), ``Retry`` (waits for temperature fallback) here, and ``core.packing``'s
``Unpack`` and ``Attributed`` for packed windows. Each records itself into the chunks' results
(``record``) and returns a ``FollowUp``: what the scheduler is left to decode. Every job item
(``Window``, ``core.packing.PackedWindow``, ``Retry``) names the chunks it holds (``keys``) and
makes its own outcome when the model raises on it (``failed``).
"""

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from whisper_pipeline.core.types import ChunkInput, ChunkResult, DecodingOptions, Segment

Language = tuple[str, float]
"""A row's language: ``(ISO 639-1 code, probability)``; probability 1.0 when it was given."""


@dataclass(frozen=True)
class Window:
    """The part of a chunk from ``offset`` frames on, still to be decoded."""

    chunk: ChunkInput
    offset: int

    @property
    def frames(self) -> int:
        """Feature frames from ``offset`` to the end of the chunk (100 per second)."""
        return self.chunk.features.shape[-1] - self.offset

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """The key of the chunk the window is part of."""
        return (self.chunk.key,)

    def features(self) -> np.ndarray:
        """Log-mel features from ``offset`` on, shape ``(n_mels, frames)``."""
        return self.chunk.features[:, self.offset :]

    def failed(self, error: str) -> "Failed":
        """The outcome when the model raised on this window alone."""
        return Failed(self, error)


@dataclass(frozen=True)
class Row:
    """One decoded row of a ``generate`` call.

    Attributes:
        tokens: Generated token ids, timestamps included, end-of-text excluded.
        avg_logprob: Average log-probability per token (faster-whisper's rule).
        no_speech_prob: Probability of the no-speech token at the first step.
        compression_ratio: gzip compression ratio of ``text``.
        temperature: Temperature it was decoded at.
        text: The decoded text, stripped.
        words: Per piece of ``Segmenter.pieces``, its words as faster-whisper's
            ``add_word_timestamps`` gives them (times in the window's chunk timeline); ``None``
            when not aligned (``core.alignment``).
    """

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    text: str
    words: list[list[dict]] | None = None

    def needs_fallback(self, options: DecodingOptions) -> bool:
        """Too repetitive or too unlikely, and not silence (``generate_with_fallback``'s rule)."""
        too_repetitive = self.compression_ratio > options.compression_ratio_threshold
        too_unlikely = self.avg_logprob < options.log_prob_threshold
        return (too_repetitive or too_unlikely) and not self.is_silence(options)

    def is_silence(self, options: DecodingOptions) -> bool:
        """Likely no speech and an unlikely text: the row yields no text."""
        return (
            self.no_speech_prob > options.no_speech_threshold
            and self.avg_logprob < options.log_prob_threshold
        )


@dataclass(frozen=True)
class FollowUp:
    """What recording an outcome leaves to the scheduler.

    Attributes:
        windows: Windows to queue: continuations, and chunks to decode alone.
        unfinished: Chunks a packed window left unfinished, to pack again.
        retries: Rows waiting for temperature fallback.
        reasons: Chunks that came out of a packed window, by reason, in the order met.
        packed: Chunks the outcome's packed window held (0 for a window of one chunk).
    """

    windows: tuple[Window, ...] = ()
    unfinished: tuple[ChunkInput, ...] = ()
    retries: tuple["Retry", ...] = ()
    reasons: tuple[tuple[str, int], ...] = ()
    packed: int = 0


@dataclass(frozen=True)
class Kept:
    """A window's decoded text: its segments (file times) and where its chunk goes on.

    Attributes:
        window: The window decoded.
        language: The row's language.
        segments: Its segments in time order; empty for silence.
        continuation: The rest of the chunk to decode in a later batch, or ``None``.
    """

    window: Window
    language: Language
    segments: tuple[Segment, ...]
    continuation: Window | None

    def record(self, results: dict[Hashable, ChunkResult]) -> FollowUp:
        """Append the segments to the chunk's result (none once it has an error)."""
        result = results[self.window.chunk.key]
        if result.error:
            return FollowUp()
        if self.window.offset == 0:
            result.language, result.language_probability = self.language
        result.segments.extend(self.segments)
        return FollowUp(windows=() if self.continuation is None else (self.continuation,))


@dataclass(frozen=True)
class Failed:
    """A window the model raised on, even alone; its chunk gets the error and no segments."""

    window: Window
    error: str

    def record(self, results: dict[Hashable, ChunkResult]) -> FollowUp:
        """Set the chunk's ``error`` and drop its segments."""
        result = results[self.window.chunk.key]
        result.error, result.segments = self.error, []
        return FollowUp()


@dataclass(frozen=True, eq=False)
class Retry:
    """A window whose first pass failed the quality checks, waiting for temperature fallback.

    ``encoded`` is the row's encoder output copied to host memory on CPU (reused as is); on
    CUDA it is ``None`` and the fallback batch is encoded again (a device ``StorageView`` cannot
    be sliced by row without another array library). ``first`` is the first-pass row, the
    first candidate when every temperature fails.
    """

    window: Window
    language: Language
    encoded: np.ndarray | None
    first: Row

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """The key of the window's chunk."""
        return self.window.keys

    def failed(self, error: str) -> Failed:
        """The outcome when the model raised on this row alone."""
        return Failed(self.window, error)

    def record(self, results: dict[Hashable, ChunkResult]) -> FollowUp:
        """Nothing to record yet: the row joins the fallback queue."""
        return FollowUp(retries=(self,))

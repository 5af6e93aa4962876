"""The transcription resource the assets use, as an interface: real and test implementations.

``TranscriberResource`` declares what the assets call on the ``whisper`` resource (``validate``,
``spec``, ``feature_extractor``, ``transcriber`` and the ``batch_size`` that sizes waves) and
the decoding options every implementation takes. ``resources.whisper.WhisperModelResource`` is
the faster-whisper implementation; the tests' double (``whisper_pipeline_tests.doubles``) is a
sibling. No implementation loads a model before ``transcriber()`` is called.
"""

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Protocol

import dagster as dg
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_pipeline.core.results import ModelSpec
from whisper_pipeline.core.types import ChunkInput, ChunkResult, DecodingOptions


class Transcriber(Protocol):
    """What ``transcribe_shards`` uses of a transcriber (``core.batching.BatchTranscriber``).

    Attributes:
        generate_calls: Decoder calls made so far.
        align_s: Seconds spent timing words so far.
        unpacked: Packed chunks decoded alone or packed again, by reason.
        packing_stopped: Whether the last ``transcribe_waves`` call stopped window packing.
        busy_s: Wall seconds of the last ``transcribe_waves`` call with a batch in the model.
        first_batch_at: ``time.monotonic()`` when its first batch reached the model, or
            ``None``.
    """

    generate_calls: int
    align_s: float
    unpacked: Counter[str]
    packing_stopped: bool
    busy_s: float
    first_batch_at: float | None

    def transcribe_waves(self, waves: Iterable[list[ChunkInput]]) -> Iterator[list[ChunkResult]]:
        """Results of the chunks of lazily read waves, each chunk's exactly once.

        An empty wave means none is ready yet (``core.streaming.StagedChunks``): the
        transcriber goes on with what it has, or waits briefly and asks again.
        """


MAX_SEED = 2**32 - 1
"""Largest ``seed``: CTranslate2's ``set_random_seed`` takes an ``unsigned int``."""


class TranscriberResource(dg.ConfigurableResource, ABC):
    """The ``whisper`` resource: a speech-to-text model behind the interface the assets call.

    Attributes:
        beam_size: Beam width at temperature 0 (Whisper's default 5).
        batch_size: Chunks per ``generate`` call; also sizes the waves a transcription step
            reads (``defs.assets.transcription.wave_frames``).
        language: ISO 639-1 code, or empty to detect per chunk (English-only models: ``en``).
        word_timestamps: Time every word (``transcript_words``) by cross-attention alignment of
            the kept encoder output, batched like decoding (``core.alignment``).
            On by default: its cost on the corpus is in ``benchmarks/RESULTS.md``.
        pack_windows: Decode chunks shorter than 10 s from many files in shared 30 s windows
            when the language is known (configured, or an English-only model), text attributed
            back by word timings (``core.packing``); a step stops packing when most packed
            chunks come back out (``core.scheduler.PACK_STOP_OUT_FRACTION``). Off by default
            (``DecodingOptions.pack_windows``): a throughput option whose risk is context
            from other files in the same window; packed output can depend on worker timing.
        seed: Seed of temperature-fallback sampling: re-running the same files with the same
            configuration gives the same tables (``DecodingOptions.seed``). Part of the result
            cache key when not 0.
    """

    beam_size: int = DecodingOptions.beam_size
    batch_size: int = DecodingOptions.batch_size
    language: str = ""
    word_timestamps: bool = DecodingOptions.word_timestamps
    pack_windows: bool = DecodingOptions.pack_windows
    seed: int = DecodingOptions.seed

    def decoding_options(self) -> DecodingOptions:
        """Decoding options from this config (Whisper defaults otherwise)."""
        return DecodingOptions(
            beam_size=self.beam_size,
            batch_size=self.batch_size,
            language=self.language or None,
            word_timestamps=self.word_timestamps,
            pack_windows=self.pack_windows,
            seed=self.seed,
        )

    def validate(self) -> None:
        """Check the configuration without loading weights, before any work is done.

        Sizes (``beam_size``, ``batch_size`` >= 1), the ``seed`` range (CTranslate2's
        ``set_random_seed`` takes an unsigned 32-bit integer), then the implementation's own
        checks (``config_problems``).

        Raises:
            ValueError: Every problem found, in one message.
        """
        problems = []
        for name in ("beam_size", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed must be from 0 to {MAX_SEED}, got {self.seed}")
        problems += self.config_problems()
        if problems:
            raise ValueError("invalid whisper configuration: " + "; ".join(problems))

    @abstractmethod
    def config_problems(self) -> list[str]:
        """What else makes this configuration unusable, one message each (``validate``)."""

    @abstractmethod
    def spec(self) -> ModelSpec:
        """The model's identity for this run: name, resolved device and compute type, options.

        Part of every result's cache key: two implementations must never share one.
        """

    @abstractmethod
    def feature_extractor(self) -> FeatureExtractor:
        """The model's log-mel frontend, without loading weights."""

    @abstractmethod
    def transcriber(self) -> Transcriber:
        """A cross-file transcriber with this config's options; loads the model if needed."""

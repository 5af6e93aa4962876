"""The core's shared types: decoding options, a chunk for the model, and what it made of it.

Dagster-free value types passed between ``core.batching`` (the decoder), ``core.scheduler``,
``core.packing``, ``core.segments``, the staging area and the result tables. Times on results are
seconds from the start of the file; features are log-mel frames at 100 per second.
"""

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from whisper_pipeline.core.audio import SAMPLE_RATE
from whisper_pipeline.core.chunking import HOP_LENGTH

MAX_TOKENS_BASE = 16
"""Tokens every window may generate, whatever its length (timestamps, punctuation, a word)."""

MAX_TOKENS_PER_SECOND = 12.0
"""Further tokens allowed per second of window audio (``DecodingOptions.max_tokens_per_second``).
On the shared corpus the fastest rows that pass the quality checks have 6.6 tokens/s (timestamps
included) once past a second or two, and the rows that run to Whisper's 224-token limit on a 5 s
window (44 tokens/s) are repetition loops that fail the compression-ratio check anyway. A
legitimate row that reaches the cap is continued from its last timestamp in a later batch, like
any window Whisper leaves unfinished, so the cap bounds the cost of loops without cutting text."""


@dataclass(frozen=True)
class DecodingOptions:
    """Decoding options shared by every row of a batch (CTranslate2 needs them identical).

    Defaults are OpenAI Whisper's ``transcribe()`` defaults, as faster-whisper also uses them.

    Attributes:
        beam_size: Beam width at temperature 0.
        best_of: Sampled candidates per row at temperature > 0.
        temperatures: Fallback schedule; the first entry is used for the first pass.
        compression_ratio_threshold: Re-decode rows whose gzip compression ratio is above this.
        log_prob_threshold: Re-decode rows whose average token log-probability is below this.
        no_speech_threshold: A row whose no-speech probability is above this *and* whose
            average log-probability is below ``log_prob_threshold`` is silence: no text.
        length_penalty: Beam-search length penalty exponent.
        max_initial_timestamp_s: Latest allowed first timestamp, in seconds.
        language: ISO 639-1 code; ``None`` detects the language per chunk (multilingual models).
        batch_size: Chunks per first-pass ``generate`` call.
        fallback_batch_size: Rows per temperature-fallback call, gathered from every batch;
            ``None`` uses ``batch_size``, at most ``core.batching.CPU_FALLBACK_BATCH`` on CPU.
        max_tokens_per_second: Token budget of a ``generate`` call: ``MAX_TOKENS_BASE`` plus
            this many tokens per second of its longest window, within the model's own limit;
            ``None`` leaves only the model's limit (448 with the prompt, as faster-whisper).
        word_timestamps: Time every word (``Segment.words``) by cross-attention alignment.
        seed: Seed of temperature-fallback sampling (``ctranslate2.set_random_seed``): the same
            inputs and options give the same sampled text (``core.batching.BatchTranscriber``).
        pack_windows: Lay chunks shorter than ``core.packing.PACK_MAX_ITEM_FRAMES`` from any
            files one after another in shared 30 s windows (``core.packing``) when the language
            is known (given, or an English-only model): Whisper's encoder costs a full 30 s
            window whatever the chunk's length. Packing stops by itself where it does not pay
            (``core.scheduler.PACK_STOP_OUT_FRACTION``). Off by default: on the corpus's real
            short clips it lost reference words that unpacked decoding kept, and one file's
            words can prime its window neighbours' decoding; a throughput option with that risk
            (``benchmarks/RESULTS.md``).
    """

    beam_size: int = 5
    best_of: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    length_penalty: float = 1.0
    max_initial_timestamp_s: float = 1.0
    language: str | None = None
    batch_size: int = 8
    fallback_batch_size: int | None = None
    max_tokens_per_second: float | None = MAX_TOKENS_PER_SECOND
    word_timestamps: bool = True
    seed: int = 0
    pack_windows: bool = False

    def cache_key_fields(self) -> dict:
        """The options that change the text (batch sizes do not), for result-cache keys."""
        return {
            "beam_size": self.beam_size,
            "best_of": self.best_of,
            "temperatures": list(self.temperatures),
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "log_prob_threshold": self.log_prob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "length_penalty": self.length_penalty,
            "max_initial_timestamp_s": self.max_initial_timestamp_s,
            "language": self.language,
            "max_tokens_per_second": self.max_tokens_per_second,
            "word_timestamps": self.word_timestamps,
            "pack_windows": self.pack_windows,
            # Seed 0 keeps the keys results were cached under before sampling was seeded.
            **({"seed": self.seed} if self.seed else {}),
        }


@dataclass(frozen=True)
class ChunkInput:
    """One chunk ready for the model.

    Attributes:
        key: Caller's identifier, returned unchanged on the result (e.g. ``(file_id, index)``).
        features: Log-mel features, shape ``(n_mels, n_frames)`` with ``n_frames <= 3000``,
            float16 or float32.
        speech_starts: File sample (16 kHz) where each speech region of the chunk starts.
        speech_ends: File sample (exclusive) where each speech region ends.
    """

    key: Hashable
    features: np.ndarray
    speech_starts: tuple[int, ...]
    speech_ends: tuple[int, ...]

    @property
    def duration_s(self) -> float:
        """Speech in the chunk, in seconds (100 frames per second)."""
        return self.features.shape[-1] * HOP_LENGTH / SAMPLE_RATE


@dataclass(frozen=True)
class Word:
    """A word timed by cross-attention alignment, times in seconds from the start of the file.

    Attributes:
        word: The word as Whisper's tokenizer splits it, punctuation attached
            (faster-whisper's ``merge_punctuations``), leading space stripped.
        start: Start in seconds.
        end: End in seconds (>= ``start``).
        probability: Mean probability of its tokens (0-1).
    """

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """A timestamped piece of text, times in seconds from the start of the file.

    ``words`` is empty unless word timestamps were asked for (``DecodingOptions``).
    """

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: tuple[Word, ...] = ()


@dataclass
class ChunkResult:
    """What the model made of one chunk.

    Attributes:
        key: The ``ChunkInput.key``.
        segments: Timestamped segments in time order; empty for silence.
        language: ISO 639-1 code of the chunk's language.
        language_probability: Probability of that language (1.0 when it was given).
        error: Empty, or why the model failed on this chunk (the chunk then has no segments).
    """

    key: Hashable
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    language_probability: float = 0.0
    error: str = ""

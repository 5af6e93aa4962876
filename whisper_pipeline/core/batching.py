"""Cross-file micro-batched Whisper decoding on CTranslate2.

CTranslate2's ``Whisper.generate`` takes a batch of encoder outputs from *different* audio:
rows that emit ``<|endoftext|>`` early drop out of the beam search while the others go on, and the
only constraint is that all prompts have the same length. So chunks from many files are decoded
together here, grouped by length so rows of a batch finish at about the same step.

Quality follows faster-whisper's sequential ``WhisperModel.generate_with_fallback``: a row whose
text is too repetitive (gzip compression ratio > 2.4) or too unlikely (average log-probability
< -1) is decoded again at the next temperature (0.2, 0.4, ... 1.0, sampling ``best_of`` = 5), and
a row the model marks as silence (no-speech probability > 0.6 with average log-probability < -1)
yields no text. The thresholds are OpenAI Whisper's ``transcribe()`` defaults.

Whisper often closes a window early (``... printing<|7.00|><|7.00|>`` then end-of-text) and
leaves the rest for the next window; the sequential decoder "seeks" to the last timestamp and
decodes again. Here that seek is batched too: every window that ended unfinished gets a
continuation window from its last timestamp, and all continuations are decoded together in the
next round.
"""

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from whisper_pipeline.core.chunking import CHUNK_LENGTH_S, HOP_LENGTH, chunk_time_map

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SEEK_ROUNDS = 8
"""Continuation rounds per chunk; a 30 s chunk rarely needs more than two."""

MIN_CONTINUATION_FRAMES = 30
"""Remainders shorter than 0.3 s after a seek are not decoded again (too short for a word)."""

MIN_SKIPPED_TAIL_FRAMES = 100
"""Speech left after a window's last segment that is decoded again: 1 s (100 frames)."""

N_FRAMES = CHUNK_LENGTH_S * 16000 // HOP_LENGTH
"""Frames in Whisper's fixed 30 s encoder window: 3000."""


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
        batch_size: Chunks per ``generate`` call.
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
    batch_size: int = 16

    def cache_key_fields(self) -> dict:
        """The options that change the text (``batch_size`` does not), for result-cache keys."""
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
        return self.features.shape[-1] * HOP_LENGTH / 16000


@dataclass(frozen=True)
class Segment:
    """A timestamped piece of text, times in seconds from the start of the file."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


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


@dataclass
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    text: str

    def needs_fallback(self, options: DecodingOptions) -> bool:
        # Same rule as faster-whisper's WhisperModel.generate_with_fallback.
        too_repetitive = self.compression_ratio > options.compression_ratio_threshold
        too_unlikely = self.avg_logprob < options.log_prob_threshold
        return (too_repetitive or too_unlikely) and not self.is_silence(options)

    def is_silence(self, options: DecodingOptions) -> bool:
        return (
            self.no_speech_prob > options.no_speech_threshold
            and self.avg_logprob < options.log_prob_threshold
        )


def pad_features(features: list[np.ndarray]) -> np.ndarray:
    """Stack chunk features into one encoder batch, zero-padded to 3000 frames.

    Zero-padding the log-mel features (not the audio) is what faster-whisper's
    ``pad_or_trim`` does in both its sequential and batched paths.

    Args:
        features: Arrays of shape ``(n_mels, n_frames_i)``, ``n_frames_i <= 3000``.

    Returns:
        Array of shape ``(batch, n_mels, 3000)``, float32, C-contiguous.
    """
    n_mels = features[0].shape[0]
    batch = np.zeros((len(features), n_mels, N_FRAMES), dtype=np.float32)
    for row, feature in enumerate(features):
        frames = min(feature.shape[-1], N_FRAMES)
        batch[row, :, :frames] = feature[:, :frames]
    return batch


def length_sorted_batches(
    items: Sequence[T], batch_size: int, length: Callable[[T], int]
) -> list[list[T]]:
    """Group items into batches of similar length, longest first.

    Rows of a ``generate`` call run until the longest one ends, and speech length predicts token
    count, so sorting by frames keeps the padding (wasted decoder steps) small.

    Args:
        items: Items in any order.
        batch_size: Maximum rows per batch (>= 1).
        length: Sort key, e.g. feature frames.

    Returns:
        Batches, each a list of at most ``batch_size`` items.
    """
    ordered = sorted(items, key=length, reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


class _RowSelector:
    """Encoder output for a subset of a batch's rows, without re-running the encoder on CPU.

    On CPU the batch's encoder output is sliced by row (identical values: profiling showed
    re-encoding for temperature fallback took a third of the encoder time on the corpus). A
    CUDA ``StorageView`` cannot be sliced without another array library, so there the rows are
    encoded once and reused while the pending set stays the same.
    """

    def __init__(self, model: WhisperModel, features: np.ndarray, encoder_output):
        self.model, self.features = model, features
        self.host = np.array(encoder_output) if encoder_output.device == "cpu" else None
        self.rows: list[int] = []
        self.output = None

    def select(self, rows: list[int]):
        if self.host is not None:
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(self.host[rows]))
        if rows != self.rows:
            self.rows, self.output = list(rows), self.model.encode(self.features[rows])
        return self.output


@dataclass(frozen=True)
class _Window:
    """The part of a chunk from ``offset`` frames on, still to be decoded."""

    chunk: ChunkInput
    offset: int

    @property
    def frames(self) -> int:
        return self.chunk.features.shape[-1] - self.offset


class BatchTranscriber:
    """Transcribes chunks from many files with batched CTranslate2 ``generate`` calls.

    Args:
        model: A loaded faster-whisper model (its CTranslate2 ``model.model`` does the work).
        options: Decoding options, identical for every row.
    """

    def __init__(self, model: WhisperModel, options: DecodingOptions):
        self.model = model
        self.options = options
        multilingual = model.model.is_multilingual
        language = options.language or (None if multilingual else "en")
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, multilingual, task="transcribe", language=language or "en"
        )
        self.fixed_language = language
        # -1 expands to Whisper's non-speech symbols, as in faster-whisper's transcribe().
        self.suppress_tokens = get_suppressed_tokens(self.tokenizer, [-1])
        self.generate_calls = 0

    def transcribe(
        self,
        chunks: Iterable[ChunkInput],
        on_batch: Callable[[int], None] | None = None,
    ) -> list[ChunkResult]:
        """Transcribe chunks in length-sorted batches, with batched seeks.

        A batch that raises inside the model is split in halves and retried, down to single
        windows; a chunk whose window still raises comes back with ``error`` set and no segments,
        so one bad chunk never loses the others.

        Args:
            chunks: Chunks from any number of files; keys must be unique.
            on_batch: Called with the row count after each batch (progress, metrics).

        Returns:
            One ``ChunkResult`` per input chunk, in input order.
        """
        chunks = list(chunks)
        results = {chunk.key: ChunkResult(key=chunk.key) for chunk in chunks}
        windows = [_Window(chunk, 0) for chunk in chunks]
        for _ in range(MAX_SEEK_ROUNDS):
            following = []
            batches = length_sorted_batches(windows, self.options.batch_size, lambda w: w.frames)
            for batch in batches:
                for window, outcome in zip(batch, self._decode_or_split(batch), strict=True):
                    result = results[window.chunk.key]
                    if isinstance(outcome, str):
                        result.error, result.segments = outcome, []
                        continue
                    if result.error:
                        continue
                    decoded, (language, probability) = outcome
                    if window.offset == 0:
                        result.language, result.language_probability = language, probability
                    continuation = self._add_segments(result, window, decoded)
                    if continuation is not None:
                        following.append(continuation)
                if on_batch is not None:
                    on_batch(len(batch))
            windows = following
            if not windows:
                break
        return [results[chunk.key] for chunk in chunks]

    def _decode_or_split(self, batch: list[_Window]) -> list:
        try:
            return self._decode_batch(batch)
        except Exception as error:  # noqa: BLE001 - any model error is isolated and recorded
            if len(batch) == 1:
                logger.warning("chunk %s failed in the model: %s", batch[0].chunk.key, error)
                return [f"{type(error).__name__}: {error}"]
            logger.warning("batch of %d failed (%s); splitting", len(batch), error)
            middle = len(batch) // 2
            return self._decode_or_split(batch[:middle]) + self._decode_or_split(batch[middle:])

    def _decode_batch(self, batch: list[_Window]) -> list[tuple[_Decoded, tuple[str, float]]]:
        features = pad_features([w.chunk.features[:, w.offset :] for w in batch])
        encoder_output = self.model.encode(features)
        languages = self._languages(encoder_output, len(batch))
        decoded = self._generate(encoder_output, languages, self.options.temperatures[0])

        # Temperature fallback, batched over the rows that still need it.
        pending = [row for row, result in enumerate(decoded) if result.needs_fallback(self.options)]
        candidates = {row: [decoded[row]] for row in pending}
        rows_output = _RowSelector(self.model, features, encoder_output)
        for temperature in self.options.temperatures[1:]:
            if not pending:
                break
            sub_output = rows_output.select(pending)
            retried = self._generate(sub_output, [languages[row] for row in pending], temperature)
            still_pending = []
            for row, result in zip(pending, retried, strict=True):
                candidates[row].append(result)
                if result.needs_fallback(self.options):
                    still_pending.append(row)
                else:
                    decoded[row] = result
            pending = still_pending
        threshold = self.options.compression_ratio_threshold
        for row in pending:
            # Every temperature failed: keep the most likely result that is not repetitive,
            # else the most likely of all (faster-whisper's rule).
            tries = candidates[row]
            below = [r for r in tries if r.compression_ratio <= threshold]
            decoded[row] = max(below or tries, key=lambda r: r.avg_logprob)
        return list(zip(decoded, languages, strict=True))

    def _languages(self, encoder_output, batch_size: int) -> list[tuple[str, float]]:
        if self.fixed_language is not None:
            return [(self.fixed_language, 1.0)] * batch_size
        detected = self.model.model.detect_language(encoder_output)
        # Each row is [(token, probability), ...] best first; a token looks like "<|en|>".
        return [(row[0][0][2:-2], float(row[0][1])) for row in detected]

    def _generate(
        self, encoder_output, languages: list[tuple[str, float]], temperature: float
    ) -> list[_Decoded]:
        options = self.options
        prompt = self.model.get_prompt(self.tokenizer, previous_tokens=[])
        prompts = []
        for language, _ in languages:
            row_prompt = list(prompt)
            if self.model.model.is_multilingual:
                # sot_sequence is [<|startoftranscript|>, <|lang|>, <|transcribe|>].
                row_prompt[1] = self.tokenizer.tokenizer.token_to_id(f"<|{language}|>")
            prompts.append(row_prompt)
        if temperature > 0:
            sampling = {
                "beam_size": 1,
                "num_hypotheses": options.best_of,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        else:
            sampling = {"beam_size": options.beam_size}
        self.generate_calls += 1
        results = self.model.model.generate(
            encoder_output,
            prompts,
            length_penalty=options.length_penalty,
            max_length=self.model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            max_initial_timestamp_index=int(round(options.max_initial_timestamp_s / 0.02)),
            **sampling,
        )
        decoded = []
        for result in results:
            tokens = result.sequences_ids[0]
            # Recover the average log-probability from CTranslate2's length-normalised score,
            # as faster-whisper's generate_with_fallback does.
            seq_len = len(tokens)
            cum_logprob = result.scores[0] * (seq_len**options.length_penalty)
            text = self.tokenizer.decode(tokens).strip()
            decoded.append(
                _Decoded(
                    tokens=tokens,
                    avg_logprob=cum_logprob / (seq_len + 1),
                    no_speech_prob=result.no_speech_prob,
                    compression_ratio=get_compression_ratio(text),
                    temperature=temperature,
                    text=text,
                )
            )
        return decoded

    def _add_segments(
        self, result: ChunkResult, window: _Window, decoded: _Decoded
    ) -> _Window | None:
        """Append the window's segments to ``result``; return the continuation window, if any."""
        if decoded.is_silence(self.options) or not decoded.text:
            return None
        frames_per_second = self.model.frames_per_second
        offset_s = window.offset / frames_per_second
        duration = window.frames / frames_per_second
        # faster-whisper's timestamp splitter, as its BatchedInferencePipeline uses it. It keeps
        # complete segments and says where to seek when the window ended unfinished.
        pieces, seek, _ = self.model._split_segments_by_timestamps(
            tokenizer=self.tokenizer,
            tokens=decoded.tokens,
            time_offset=offset_s,
            segment_size=window.frames,
            segment_duration=duration,
            seek=0,
        )
        chunk = window.chunk
        time_map = chunk_time_map(list(chunk.speech_starts), list(chunk.speech_ends))
        chunk_end = chunk.duration_s
        for piece in pieces:
            text = self.tokenizer.decode(piece["tokens"]).strip()
            if not text:
                continue
            start = min(max(piece["start"], 0.0), chunk_end)
            end = min(max(piece["end"], start), chunk_end)
            result.segments.append(
                Segment(
                    start=time_map.get_original_time(start),
                    end=time_map.get_original_time(end, is_end=True),
                    text=text,
                    avg_logprob=float(decoded.avg_logprob),
                    no_speech_prob=float(decoded.no_speech_prob),
                    compression_ratio=get_compression_ratio(text),
                    temperature=decoded.temperature,
                )
            )
        if not 0 < seek < window.frames and pieces:
            # The window claims to be finished, but everything in a chunk is VAD speech: a tail
            # of over a second after the last segment is speech the model skipped (common at a
            # change of talker). Decode it as a continuation too.
            last_end = int(round((pieces[-1]["end"] - offset_s) * frames_per_second))
            if window.frames - last_end >= MIN_SKIPPED_TAIL_FRAMES:
                seek = last_end
        if 0 < seek < window.frames and window.frames - seek >= MIN_CONTINUATION_FRAMES:
            return _Window(chunk, window.offset + seek)
        return None

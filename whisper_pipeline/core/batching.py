"""Cross-file micro-batched Whisper decoding on CTranslate2.

CTranslate2's ``Whisper.generate`` takes a batch of encoder outputs from *different* audio:
rows that emit ``<|endoftext|>`` early drop out of the beam search while the others go on, and the
only constraint is that all prompts have the same length. So chunks from many files are decoded
together here, grouped by length so rows of a batch finish at about the same step.

Quality follows faster-whisper's sequential ``WhisperModel.generate_with_fallback``: a row whose
text is too repetitive (gzip compression ratio > 2.4) or too unlikely (average log-probability
< -1) is decoded again at the next temperature (0.2, 0.4, ... 1.0, sampling ``best_of`` = 5), and
a row the model marks as silence (no-speech probability > 0.6 with average log-probability < -1)
yields no text. The thresholds are OpenAI Whisper's ``transcribe()`` defaults. Rows that need
fallback are collected from every batch and re-decoded together, from their kept encoder output,
so a fallback ``generate`` call has several rows instead of the one or two a single batch yields.

Whisper often closes a window early (``... printing<|7.00|><|7.00|>`` then end-of-text) and
leaves the rest for the next window; the sequential decoder "seeks" to the last timestamp and
decodes again. Here that seek is batched too: a window that ended unfinished gets a continuation
window from its last timestamp, which waits with every other window for the next free batch.

Batches are independent, so they are handed to as many threads as the model has CTranslate2
workers (``WhisperModel(num_workers=N)`` replicates the model; ``generate`` releases the GIL),
each thread taking the next batch as soon as it is done (``BatchTranscriber.transcribe_waves``).
On a 2-core CPU two single-threaded workers transcribed the shared corpus faster than one worker
with two threads, whose small per-step matrix products do not keep both cores busy (timings in
``benchmarks/RESULTS.md``). Short chunks may share a window (``core.packing``).
"""

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from whisper_pipeline.core.chunking import N_FRAMES, chunk_time_map
from whisper_pipeline.core.packing import (
    PACK_GAP_FRAMES,
    PackedWindow,
    assign_words,
    doubtful_chunks,
    pack_chunks,
    split_segments,
)
from whisper_pipeline.core.types import (
    MAX_TOKENS_BASE,
    ChunkInput,
    ChunkResult,
    DecodingOptions,
    Segment,
    Word,
)

logger = logging.getLogger(__name__)

PACK_STOP_MIN_CHUNKS = 16
"""Chunks decoded in packed windows before ``PACK_STOP_OUT_FRACTION`` is judged."""

PACK_STOP_OUT_FRACTION = 0.5
"""Packing stops for the rest of a ``transcribe_waves`` call once more than this share of the
chunks decoded in packed windows came back out of them (decoded alone or packed again): each
such chunk costs its share of the packed window and a window of its own, so packing then costs
more than the encoder passes it saves. On 120 short synthesized clips 16 of 134 came back out
(12%); on the shared corpus, whose short chunks are consecutive sentences of one reader,
repeated clips and languages tiny.en does not know, 66 of 92 (72%), and packing every chunk was
7% slower than none (``benchmarks/RESULTS.md``)."""

T = TypeVar("T")

MAX_SEEK_ROUNDS = 8
"""Windows decoded per chunk at most (its first and its continuations); a 30 s chunk rarely
needs more than two."""

MIN_CONTINUATION_FRAMES = 30
"""Remainders shorter than 0.3 s after a seek are not decoded again (too short for a word)."""

MIN_SKIPPED_TAIL_FRAMES = 100
"""Speech left after a window's last segment that is decoded again: 1 s (100 frames)."""

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
"""Punctuation merged into the following word (faster-whisper's ``transcribe`` default)."""

APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
"""Punctuation merged into the preceding word (faster-whisper's ``transcribe`` default)."""

CPU_FALLBACK_BATCH = 4
"""Rows per temperature-fallback ``generate`` call on CPU. Sampling ``best_of`` = 5 candidates
per row makes each row five decoder rows; on 2 CPU cores a row cost least in a call of 4, less
than alone and less than in a call of 8 (timings in ``benchmarks/RESULTS.md``). On CUDA the
batch size is used."""


@dataclass
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    text: str
    # Per piece of ``BatchTranscriber._pieces``, its words as faster-whisper's
    # add_word_timestamps gives them (times in the chunk's speech timeline); None when not aligned.
    words: list[list[dict]] | None = None

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


@dataclass(frozen=True)
class _Window:
    """The part of a chunk from ``offset`` frames on, still to be decoded."""

    chunk: ChunkInput
    offset: int

    @property
    def frames(self) -> int:
        return self.chunk.features.shape[-1] - self.offset

    def features(self) -> np.ndarray:
        return self.chunk.features[:, self.offset :]


UNPACK = object()
"""First-pass outcome of a packed window whose chunks are to be decoded alone."""


def _keys(window) -> list[Hashable]:
    """The keys of the chunks a window holds: one, or a packed window's several."""
    if isinstance(window, PackedWindow):
        return [item.key for item in window.items]
    return [window.chunk.key]


@dataclass
class _Retry:
    """A window whose first pass failed the quality checks, waiting for temperature fallback.

    ``encoded`` is the row's encoder output copied to host memory on CPU (reused as is); on
    CUDA it is ``None`` and the fallback batch is encoded again (a device ``StorageView`` cannot
    be sliced by row without another array library).
    """

    window: _Window
    language: tuple[str, float]
    encoded: np.ndarray | None
    candidates: list["_Decoded"]


class _Queue:
    """What waits for a worker in ``BatchTranscriber.transcribe_waves``, and the results so far.

    Attributes:
        results: Result per chunk taken in and not yet yielded, in the order taken in.
        windows: Windows waiting for a first pass.
        retries: Rows waiting for temperature fallback.
        decoded: Windows decoded so far per chunk (``MAX_SEEK_ROUNDS`` bounds it).
        repacked: Chunks already packed again (a packed window left them unfinished, or they
            shared a segment with a neighbour).
        packing: Whether chunks are still packed (``PACK_STOP_OUT_FRACTION``).
        packed_chunks: Chunks decoded in packed windows so far; ``packed_out``: those that
            came back out of them.
    """

    def __init__(self, transcriber: "BatchTranscriber", refill: int):
        self.transcriber = transcriber
        self.refill = refill
        self.results: dict[Hashable, ChunkResult] = {}
        self.windows: list = []
        self.retries: list[_Retry] = []
        self.decoded: Counter[Hashable] = Counter()
        self.repacked: set[Hashable] = set()
        self.more = True
        self.packing = transcriber.options.pack_windows and transcriber.fixed_language is not None
        self.packed_chunks = self.packed_out = 0

    def take_waves(self, waves: Iterator[list[ChunkInput]]) -> None:
        """Take in waves while fewer than ``refill`` windows wait (packed where enabled)."""
        while self.more and len(self.windows) < self.refill:
            wave = next(waves, None)
            if wave is None:
                self.more = False
                return
            for chunk in wave:
                self.results[chunk.key] = ChunkResult(key=chunk.key)
            if self.packing:
                packed, alone = pack_chunks(wave)
                self.windows += packed + [_Window(chunk, 0) for chunk in alone]
            else:
                self.windows += [_Window(chunk, 0) for chunk in wave]

    def next_job(self, free: int) -> tuple[str, list] | None:
        """The next job for one of ``free`` idle workers, or ``None`` when nothing waits.

        A full group of fallback rows goes first (their encoder output is held in memory), or
        any fallback rows when no window waits. Otherwise the longest waiting windows, up to
        ``batch_size``, fewer when that leaves the other free workers a share.
        """
        size = self.transcriber.fallback_size()
        if len(self.retries) >= size or (self.retries and not self.windows):
            self.retries.sort(key=lambda retry: retry.window.frames, reverse=True)
            group, self.retries = self.retries[:size], self.retries[size:]
            return "fallback", group
        if not self.windows:
            return None
        self.windows.sort(key=lambda window: window.frames, reverse=True)
        count = min(self.transcriber.options.batch_size, math.ceil(len(self.windows) / free))
        batch, self.windows = self.windows[:count], self.windows[count:]
        return "batch", batch

    def finish(self, kind: str, items: list, outcomes: list) -> None:
        """Record a finished job's outcomes; queue what they leave to decode."""
        transcriber, results = self.transcriber, self.results
        following: list = []
        unfinished: list[ChunkInput] = []
        if kind == "fallback":
            for retry, outcome in outcomes:
                window = retry.window
                following += transcriber._finish(results[window.chunk.key], window, outcome)
        else:
            for window, outcome in zip(items, outcomes, strict=True):
                self.decoded.update(_keys(window))
                if isinstance(window, PackedWindow):
                    alone, left = transcriber._finish_packed(results, window, outcome)
                    following += alone
                    unfinished += left
                    self.packed_chunks += len(window.items)
                    self.packed_out += len(alone) + len(left)
                elif isinstance(outcome, _Retry):
                    self.retries.append(outcome)
                else:
                    following += transcriber._finish(results[window.chunk.key], window, outcome)
        self.judge_packing()
        # Chunks a packed window left unfinished, or that shared a segment, share new
        # windows once; a chunk that comes back again is decoded alone.
        twice = [chunk for chunk in unfinished if chunk.key in self.repacked]
        again = [chunk for chunk in unfinished if chunk.key not in self.repacked]
        if not self.packing:
            twice, again = twice + again, []
        self.repacked.update(chunk.key for chunk in again)
        packed, alone = pack_chunks(again)
        following += packed + [_Window(chunk, 0) for chunk in alone + twice]
        self.windows += [
            window
            for window in following
            if all(self.decoded[key] < MAX_SEEK_ROUNDS for key in _keys(window))
        ]

    def judge_packing(self) -> None:
        """Stop packing when too many packed chunks came back out (``PACK_STOP_OUT_FRACTION``).

        The packed windows still waiting are split into one window per chunk; later waves are
        not packed.
        """
        if not self.packing or self.packed_chunks < PACK_STOP_MIN_CHUNKS:
            return
        if self.packed_out <= PACK_STOP_OUT_FRACTION * self.packed_chunks:
            return
        self.packing = False
        self.transcriber.packing_stopped = True
        waiting = [w for w in self.windows if isinstance(w, PackedWindow)]
        self.windows = [w for w in self.windows if not isinstance(w, PackedWindow)]
        self.windows += [_Window(item, 0) for window in waiting for item in window.items]
        split = sum(len(w.items) for w in waiting)
        if split:
            self.transcriber.unpacked["packing stopped"] += split
        logger.info(
            "window packing stopped: %d of %d chunks came back out of packed windows; "
            "%d chunks waiting in packed windows are decoded alone",
            self.packed_out,
            self.packed_chunks,
            split,
        )

    def finished_results(self, busy: Iterable[tuple[str, list]]) -> list[ChunkResult]:
        """Pop the results of the chunks with nothing waiting and nothing in ``busy`` jobs."""
        pending = {key for window in self.windows for key in _keys(window)}
        pending.update(retry.window.chunk.key for retry in self.retries)
        for kind, items in busy:
            for item in items:
                pending.update(_keys(item.window if kind == "fallback" else item))
        return [self.results.pop(key) for key in list(self.results) if key not in pending]


class BatchTranscriber:
    """Transcribes chunks from many files with batched CTranslate2 ``generate`` calls.

    Args:
        model: A loaded faster-whisper model (its CTranslate2 ``model.model`` does the work).
            Its ``num_workers`` CTranslate2 workers each decode one batch at a time.
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
        self.workers = max(1, int(getattr(model.model, "num_workers", 1)))
        self._tokenizers = {language or "en": self.tokenizer}
        self.generate_calls = 0
        self.align_calls = 0
        self.align_s = 0.0
        self.align_failures = 0
        self.unpacked: Counter[str] = Counter()
        """Packed chunks decoded alone again, by reason (``_finish_packed``)."""
        self.packing_stopped = False
        """Whether the last ``transcribe_waves`` call stopped packing (``_Queue.judge_packing``)."""
        self._calls_lock = threading.Lock()

    def transcribe(self, chunks: Iterable[ChunkInput]) -> list[ChunkResult]:
        """Transcribe chunks in length-sorted batches, with batched seeks.

        A batch that raises inside the model is split in halves and retried, down to single
        windows; a chunk whose window still raises comes back with ``error`` set and no segments,
        so one bad chunk never loses the others.

        Args:
            chunks: Chunks from any number of files; keys must be unique.

        Returns:
            One ``ChunkResult`` per input chunk, in input order.
        """
        chunks = list(chunks)
        done = {r.key: r for finished in self.transcribe_waves([chunks]) for r in finished}
        return [done[chunk.key] for chunk in chunks]

    def transcribe_waves(
        self, waves: Iterable[list[ChunkInput]], refill: int | None = None
    ) -> Iterator[list[ChunkResult]]:
        """Transcribe waves of chunks, keeping every worker busy until the last one is done.

        Windows waiting to be decoded form a queue. Whenever a worker is free it gets the next
        batch: up to ``batch_size`` of the longest waiting windows (split evenly between the
        free workers when few wait), or a group of rows that failed the quality checks, for
        temperature fallback. What a batch leaves (continuations, chunks to decode alone,
        chunks a packed window left unfinished, packed again) joins the queue at once. There
        are no rounds that all batches must finish before the next starts: on the corpus, one
        wave decoded in rounds took 52.8 s and two waves 59.0 s, the workers idling at every
        round's end (``benchmarks/RESULTS.md``). The next wave joins whenever fewer than
        ``refill`` windows wait, so at most about two waves are held at once.

        Which windows share a batch depends on timing; at temperature 0 the text does not
        (CTranslate2 decodes each row alone). Packed windows re-packed from unfinished chunks
        depend on it too.

        Args:
            waves: Lists of chunks (from any number of files; keys unique across all waves),
                consumed lazily, one list at a time.
            refill: Waiting windows below which the next wave is taken in; default two batches
                per worker (on the corpus, in waves of 64 chunks: 47.1 s, against 50.2 s with
                one batch per worker and 47.8 s for all chunks in one wave).

        Yields:
            Whenever a batch finishes chunks, their results (never an empty list); every
            chunk's result is yielded exactly once. A chunk still unfinished after
            ``MAX_SEEK_ROUNDS`` windows keeps what it has.
        """
        refill = refill or 2 * self.workers * self.options.batch_size
        waves = iter(waves)
        self.packing_stopped = False
        queue = _Queue(self, refill)
        with ThreadPoolExecutor(self.workers) as executor:
            in_flight: dict[Future, tuple[str, list]] = {}
            while True:
                queue.take_waves(waves)
                while len(in_flight) < self.workers:
                    job = queue.next_job(self.workers - len(in_flight))
                    if job is None:
                        break
                    kind, items = job
                    work = self._fallback_group if kind == "fallback" else self._decode_batch
                    in_flight[executor.submit(work, items)] = job
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    kind, items = in_flight.pop(future)
                    queue.finish(kind, items, future.result())
                finished = queue.finished_results(in_flight.values())
                if finished:
                    yield finished

    def _decode_batch(self, batch: list) -> list:
        """First pass of a batch, a model error isolated to its window (``_isolated``)."""
        return self._isolated(self._first_pass, batch)

    def _finish(self, result: ChunkResult, window: _Window, outcome) -> list[_Window]:
        """Record a window's outcome (decoded row or error); return its continuation, if any."""
        if isinstance(outcome, str):
            result.error, result.segments = outcome, []
            return []
        if result.error:
            return []
        decoded, (language, probability) = outcome
        if window.offset == 0:
            result.language, result.language_probability = language, probability
        continuation = self._add_segments(result, window, decoded)
        return [] if continuation is None else [continuation]

    def _finish_packed(
        self, results: dict, packed: PackedWindow, outcome
    ) -> tuple[list[_Window], list[ChunkInput]]:
        """Attribute a packed window's text to its chunks (``core.packing``).

        Returns:
            ``(alone, unfinished)``: windows of the chunks to decode alone, and the chunks
            to pack again: those past the window's last complete segment (Whisper left them
            for a next window) and those whose text Whisper's segments do not
            confirm (``split_segments``). A chunk is decoded alone when the window failed (model
            error, quality checks, silence), when its words or a neighbour's are doubtful
            (``doubtful_chunks``), when it or a neighbour got no text (never silence a chunk
            for its neighbours' sake; its words may have gone to a neighbour), or when its
            own text is too repetitive.
        """
        items = packed.items
        if outcome is UNPACK or isinstance(outcome, str):
            reason = "failed window" if isinstance(outcome, str) else "window checks"
            self.unpacked[reason] += len(items)
            return [_Window(item, 0) for item in items], []
        decoded, (language, probability) = outcome
        pieces, seek = self._pieces(packed, decoded)
        fps = self.model.frames_per_second
        spans = packed.spans(fps)
        # Complete up to the last timestamp token: text after it was cut (token budget) or
        # left for a continuation; a chunk ending within half a gap of it is complete.
        slack_s = PACK_GAP_FRAMES / fps / 2
        timestamps = [t for t in decoded.tokens if t >= self.tokenizer.timestamp_begin]
        complete_s = packed.frames / fps if not 0 < seek < packed.frames else seek / fps
        last_s = (timestamps[-1] - self.tokenizer.timestamp_begin) * self.model.time_precision
        complete_s = min(complete_s, (last_s if timestamps else 0.0) + slack_s)
        if pieces:
            complete_s = min(complete_s, max(p["end"] for p in pieces) + slack_s)
        assigned = assign_words(pieces, decoded.words, spans)
        doubtful = doubtful_chunks(spans, assigned, complete_s)
        shared = split_segments(spans, assigned)
        alone, unfinished = [], []
        for index, item in enumerate(items):
            start_s, end_s = spans[index]
            if index in doubtful:
                self.unpacked["doubtful words"] += 1
                alone.append(_Window(item, 0))
                continue
            if end_s > complete_s or index in shared:
                self.unpacked["unfinished" if end_s > complete_s else "shared segment"] += 1
                unfinished.append(item)
                continue
            segments = self._packed_segments(item, start_s, assigned[index], decoded)
            repetitive = any(
                s.compression_ratio > self.options.compression_ratio_threshold for s in segments
            )
            if not segments or repetitive:
                self.unpacked["repetitive" if repetitive else "no text"] += 1
                alone.append(_Window(item, 0))
                continue
            result = results[item.key]
            result.language, result.language_probability = language, probability
            result.segments.extend(segments)
        return alone, unfinished

    def _packed_segments(
        self, item: ChunkInput, start_s: float, assigned: list, decoded: _Decoded
    ) -> list[Segment]:
        """A packed chunk's segments from the pieces (and words) attributed to it.

        Times are moved from the window to the chunk (less ``start_s``), clamped to the chunk,
        and mapped to the file through the chunk's speech regions, as for a chunk decoded alone.
        """
        time_map = chunk_time_map(list(item.speech_starts), list(item.speech_ends))
        length = item.duration_s

        def file_time(seconds: float, is_end: bool = False) -> float:
            local = min(max(seconds - start_s, 0.0), length)
            return time_map.get_original_time(local, is_end=is_end)

        segments = []
        for piece, words in assigned:
            if words:
                text = "".join(word["word"] for word in words).strip()
                begin, finish = words[0]["start"], words[-1]["end"]
            else:
                text = self.tokenizer.decode(piece["tokens"]).strip()
                begin, finish = piece["start"], piece["end"]
            if text:
                segments.append(_segment(text, begin, finish, words, decoded, file_time))
        return segments

    def _isolated(self, run: Callable[[list[T]], list], items: list[T]) -> list:
        """``run(items)``, split in halves on an exception, down to single items.

        A single item that still raises gets the error message as its outcome.
        """
        try:
            return run(items)
        except Exception as error:  # any model error is isolated and recorded
            if len(items) == 1:
                item = items[0]
                window = item.window if isinstance(item, _Retry) else item
                logger.warning("chunk %s failed in the model: %s", window.chunk.key, error)
                return [f"{type(error).__name__}: {error}"]
            logger.warning("batch of %d failed (%s); splitting", len(items), error)
            middle = len(items) // 2
            return self._isolated(run, items[:middle]) + self._isolated(run, items[middle:])

    def _first_pass(self, batch: list[_Window]) -> list:
        """Decode a batch at the first temperature.

        Returns:
            Per window, ``(decoded, (language, probability))``, or a ``_Retry`` when the row
            failed the quality checks.
        """
        encoder_output = self.model.encode(pad_features([w.features() for w in batch]))
        languages = self._languages(encoder_output, len(batch))
        frames = max(w.frames for w in batch)
        decoded = self._generate(encoder_output, languages, self.options.temperatures[0], frames)
        host = self._host_copy(encoder_output)
        outcomes, final = [], []
        for row, (window, result) in enumerate(zip(batch, decoded, strict=True)):
            encoded = None if host is None else host[row]
            if isinstance(window, PackedWindow) and (
                result.needs_fallback(self.options) or result.is_silence(self.options)
            ):
                # One hard or silent chunk must not send its neighbours to temperature
                # fallback or silence them: the window's chunks are decoded alone instead.
                outcomes.append(UNPACK)
            elif result.needs_fallback(self.options) and len(self.options.temperatures) > 1:
                # A copy, not a view: a view would keep the whole batch's output alive.
                encoded = None if encoded is None else encoded.copy()
                outcomes.append(_Retry(window, languages[row], encoded, [result]))
            else:
                outcomes.append((result, languages[row]))
                final.append((window, result, languages[row][0], encoded))
        whole_batch = encoder_output if len(final) == len(batch) else None
        self._attach_words(final, whole_batch)
        return outcomes

    def _host_copy(self, encoder_output) -> np.ndarray | None:
        """The encoder output as a host array, kept for fallback; ``None`` on CUDA."""
        return np.array(encoder_output) if encoder_output.device == "cpu" else None

    def fallback_size(self) -> int:
        """Rows per temperature-fallback call.

        ``fallback_batch_size``, else ``batch_size`` (at most ``CPU_FALLBACK_BATCH`` on CPU).
        """
        size = self.options.fallback_batch_size or self.options.batch_size
        if self.options.fallback_batch_size is None and self.model.model.device == "cpu":
            size = min(size, CPU_FALLBACK_BATCH)
        return size

    def _fallback_group(self, group: list[_Retry]) -> list[tuple[_Retry, object]]:
        """Temperature fallback for a group of rows, temperature after temperature.

        Rows that pass the quality checks at a temperature drop out; the rest go on to the
        next. A row that fails at every temperature keeps its most likely result that is not
        repetitive, else the most likely of all (faster-whisper's rule).

        Returns:
            ``(retry, outcome)`` for every row: outcome is ``(decoded, language)`` or an
            error message.
        """
        done: list[tuple[_Retry, object]] = []
        pending = list(group)
        for temperature in self.options.temperatures[1:]:
            if not pending:
                break
            outcomes = self._isolated(partial(self._sample, temperature=temperature), pending)
            still_pending = []
            for retry, outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, str):
                    done.append((retry, outcome))
                    continue
                retry.candidates.append(outcome)
                if outcome.needs_fallback(self.options):
                    still_pending.append(retry)
                else:
                    done.append((retry, (outcome, retry.language)))
            pending = still_pending
        threshold = self.options.compression_ratio_threshold
        chosen = []
        for retry in pending:
            below = [r for r in retry.candidates if r.compression_ratio <= threshold]
            best = max(below or retry.candidates, key=lambda r: r.avg_logprob)
            done.append((retry, (best, retry.language)))
            chosen.append((retry.window, best, retry.language[0], retry.encoded))
        self._attach_words(chosen, None)
        return done

    def _sample(self, items: list[_Retry], temperature: float) -> list[_Decoded]:
        """Decode rows again at ``temperature`` (sampling), from their kept encoder output."""
        if items[0].encoded is not None:
            stacked = np.stack([item.encoded for item in items])
            encoder_output = ctranslate2.StorageView.from_array(stacked)
        else:
            features = pad_features([item.window.features() for item in items])
            encoder_output = self.model.encode(features)
        languages = [item.language for item in items]
        frames = max(item.window.frames for item in items)
        decoded = self._generate(encoder_output, languages, temperature, frames)
        passed = [
            (item.window, result, item.language[0], item.encoded)
            for item, result in zip(items, decoded, strict=True)
            if not result.needs_fallback(self.options)
        ]
        self._attach_words(passed, encoder_output if len(passed) == len(items) else None)
        return decoded

    def _languages(self, encoder_output, batch_size: int) -> list[tuple[str, float]]:
        if self.fixed_language is not None:
            return [(self.fixed_language, 1.0)] * batch_size
        detected = self.model.model.detect_language(encoder_output)
        # Each row is [(token, probability), ...] best first; a token looks like "<|en|>".
        return [(row[0][0][2:-2], float(row[0][1])) for row in detected]

    def max_length(self, prompt_length: int, frames: int) -> int:
        """Largest sequence (prompt included) a call whose longest window has ``frames`` may make.

        ``prompt_length + MAX_TOKENS_BASE + max_tokens_per_second * seconds``, rounded up, at
        most the model's ``max_length`` (448, faster-whisper's default for every call).
        """
        limit = self.model.max_length
        if self.options.max_tokens_per_second is None:
            return limit
        seconds = frames / self.model.frames_per_second
        budget = MAX_TOKENS_BASE + math.ceil(self.options.max_tokens_per_second * seconds)
        return min(limit, prompt_length + budget)

    def _generate(
        self, encoder_output, languages: list[tuple[str, float]], temperature: float, frames: int
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
        with self._calls_lock:
            self.generate_calls += 1
        results = self.model.model.generate(
            encoder_output,
            prompts,
            length_penalty=options.length_penalty,
            max_length=self.max_length(len(prompt), frames),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self.suppress_tokens,
            max_initial_timestamp_index=round(
                options.max_initial_timestamp_s / self.model.time_precision
            ),
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

    def _pieces(self, window: _Window, decoded: _Decoded) -> tuple[list[dict], int]:
        """The window's complete segments (times in the chunk's timeline) and where to seek.

        faster-whisper's timestamp splitter, as its ``BatchedInferencePipeline`` uses it: it
        keeps complete segments and says where to seek when the window ended unfinished.
        """
        frames_per_second = self.model.frames_per_second
        pieces, seek, _ = self.model._split_segments_by_timestamps(
            tokenizer=self.tokenizer,
            tokens=decoded.tokens,
            time_offset=window.offset / frames_per_second,
            segment_size=window.frames,
            segment_duration=window.frames / frames_per_second,
            seek=0,
        )
        return pieces, seek

    def _tokenizer_for(self, language: str) -> Tokenizer:
        """A tokenizer whose start sequence names ``language`` (alignment prompts)."""
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer,
                self.model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
        return self._tokenizers[language]

    def _attach_words(self, rows: list[tuple], encoder_output=None) -> None:
        """Time the words of finished rows: one batched ``Whisper.align`` per language.

        faster-whisper's ``add_word_timestamps`` (its ``word_timestamps=True`` method: DTW over
        the alignment heads' cross-attention, punctuation merged, long words at pauses cut) on
        the rows' kept encoder output, ``num_frames`` per row. Sets ``_Decoded.words``; rows
        without text are left alone. An alignment error is logged and leaves the rows without
        words (their text is kept): timing words must never lose a transcript.

        Args:
            rows: ``(window, decoded, language, encoded)`` per row; ``encoded`` is the row's
                encoder output on the host, or ``None`` (CUDA: the windows are encoded again).
            encoder_output: The encoder output of exactly these rows in this order, if at hand.
        """
        if not self.options.word_timestamps:
            return
        by_language: dict[str, list[tuple[int, list[dict]]]] = {}
        for index, (window, decoded, language, _) in enumerate(rows):
            if decoded.is_silence(self.options) or not decoded.text:
                continue
            pieces, _ = self._pieces(window, decoded)
            segments = [
                {"tokens": p["tokens"], "seek": window.offset, "start": p["start"],
                 "end": p["end"]}
                for p in pieces
            ]  # fmt: skip
            if any(t < self.tokenizer.eot for p in pieces for t in p["tokens"]):
                by_language.setdefault(language, []).append((index, segments))
        for language, group in by_language.items():
            indices = [index for index, _ in group]
            if encoder_output is not None and indices == list(range(len(rows))):
                encoded = encoder_output
            elif all(rows[i][3] is not None for i in indices):
                stacked = np.stack([rows[i][3] for i in indices])
                encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(stacked))
            else:
                encoded = self.model.encode(pad_features([rows[i][0].features() for i in indices]))
            started = time.perf_counter()
            try:
                self.model.add_word_timestamps(
                    [segments for _, segments in group],
                    self._tokenizer_for(language),
                    encoded,
                    [rows[i][0].frames for i in indices],
                    PREPEND_PUNCTUATIONS,
                    APPEND_PUNCTUATIONS,
                    last_speech_timestamp=0.0,
                )
            except Exception as error:  # timing words must never lose the text
                with self._calls_lock:
                    self.align_failures += len(group)
                logger.warning("word alignment failed for %d rows: %s", len(group), error)
                continue
            with self._calls_lock:
                self.align_calls += 1
                self.align_s += time.perf_counter() - started
            for index, segments in group:
                rows[index][1].words = [segment.get("words", []) for segment in segments]

    def _add_segments(
        self, result: ChunkResult, window: _Window, decoded: _Decoded
    ) -> _Window | None:
        """Append the window's segments to ``result``; return the continuation window, if any."""
        if decoded.is_silence(self.options) or not decoded.text:
            return None
        frames_per_second = self.model.frames_per_second
        offset_s = window.offset / frames_per_second
        pieces, seek = self._pieces(window, decoded)
        chunk = window.chunk
        time_map = chunk_time_map(list(chunk.speech_starts), list(chunk.speech_ends))
        chunk_end = chunk.duration_s

        def file_time(seconds: float, is_end: bool = False) -> float:
            clamped = min(max(seconds, 0.0), chunk_end)
            return time_map.get_original_time(clamped, is_end=is_end)

        for number, piece in enumerate(pieces):
            text = self.tokenizer.decode(piece["tokens"]).strip()
            if not text:
                continue
            start = min(max(piece["start"], 0.0), chunk_end)
            end = min(max(piece["end"], start), chunk_end)
            words = decoded.words[number] if decoded.words else []
            result.segments.append(_segment(text, start, end, words, decoded, file_time))
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


def _segment(
    text: str,
    start: float,
    end: float,
    words: list[dict],
    decoded: _Decoded,
    file_time: Callable[..., float],
) -> Segment:
    """A ``Segment`` of a decoded row, its times and its words' mapped to the file.

    Args:
        text: The segment's text.
        start: Its start, seconds in the row's timeline (what ``file_time`` maps).
        end: Its end, likewise.
        words: Its aligned words (``add_word_timestamps`` dicts), times in the same timeline;
            each is clamped inside ``[start, end]``: the alignment of a window's last words can
            spill past its last timestamp into audio a continuation window decodes again.
        decoded: The row (its scores go on the segment).
        file_time: ``(seconds, is_end=False) -> seconds from the file start``.
    """
    timed = []
    for word in words:
        local_start = min(max(word["start"], start), end)
        word_start = file_time(local_start)
        word_end = file_time(min(max(word["end"], local_start), end), is_end=True)
        word_end = max(word_end, word_start)
        timed.append(Word(word["word"].strip(), word_start, word_end, float(word["probability"])))
    file_start = file_time(start)
    return Segment(
        start=file_start,
        end=max(file_time(end, is_end=True), file_start),
        text=text,
        avg_logprob=float(decoded.avg_logprob),
        no_speech_prob=float(decoded.no_speech_prob),
        compression_ratio=get_compression_ratio(text),
        temperature=decoded.temperature,
        words=tuple(timed),
    )

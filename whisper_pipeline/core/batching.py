"""Cross-file micro-batched Whisper decoding on CTranslate2, with temperature fallback.

CTranslate2's ``Whisper.generate`` decodes a batch of encoder outputs from *different* audio,
each row alone, so chunks from many files share ``generate`` calls. Quality follows
faster-whisper's ``generate_with_fallback``: a row too repetitive or too unlikely is decoded
again at the next temperature, from its kept encoder output, in calls that gather such rows
from every batch; a silent row yields no text. A window Whisper left unfinished is continued
from its last timestamp in a later batch. Which windows wait, and which share a batch, is
``core.scheduler``'s; batches run on as many threads as the model has CTranslate2 workers.
At temperature 0 the text does not depend on which rows share a batch; sampling is seeded and,
on a model of several workers, done row by row on fresh one-worker copies (``sampler``).
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TypeVar

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from whisper_pipeline.core.alignment import AlignRow, WordAligner
from whisper_pipeline.core.chunking import N_FRAMES
from whisper_pipeline.core.decoding import Decoder
from whisper_pipeline.core.packing import PackedWindow, Unpack, attribute
from whisper_pipeline.core.scheduler import Scheduler
from whisper_pipeline.core.segments import Segmenter
from whisper_pipeline.core.types import ChunkInput, ChunkResult, DecodingOptions
from whisper_pipeline.core.windows import Failed, Kept, Language, Retry, Row, Window

logger = logging.getLogger(__name__)

T = TypeVar("T")

CPU_FALLBACK_BATCH = 4
"""Rows per temperature-fallback ``generate`` call on CPU. Sampling ``best_of`` = 5 candidates
per row makes each row five decoder rows; on 2 CPU cores a row cost least in a call of 4, less
than alone and less than in a call of 8 (``benchmarks/RESULTS.md``). On CUDA the batch size is
used."""


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


def best_candidate(candidates: list[Row], compression_ratio_threshold: float) -> Row:
    """The row kept when every temperature failed (faster-whisper's rule).

    The most likely (average log-probability) of those not too repetitive, else of all.
    """
    below = [r for r in candidates if r.compression_ratio <= compression_ratio_threshold]
    return max(below or candidates, key=lambda r: r.avg_logprob)


class BatchTranscriber:
    """Transcribes chunks from many files with batched CTranslate2 ``generate`` calls.

    Args:
        model: A loaded faster-whisper model (its CTranslate2 ``model.model`` does the work).
            Its ``num_workers`` CTranslate2 workers each decode one batch at a time.
        options: Decoding options, identical for every row.
        sampler: Makes a fresh one-worker CTranslate2 ``Whisper``; with a model of several
            workers, each fallback row samples alone on one, so its text depends on the row and
            ``options.seed`` only. Otherwise rows sample on ``model`` (docs/ARCHITECTURE.md,
            "reproducible sampling").

    Attributes:
        unpacked: Packed chunks decoded alone or packed again, by reason (``core.packing``).
        packing_stopped: Whether the last ``transcribe_waves`` call stopped packing
            (``core.scheduler.PACK_STOP_OUT_FRACTION``).
        busy_s: Wall seconds of the last ``transcribe_waves`` call with a batch in the model.
        first_batch_at: ``time.monotonic()`` when its first batch went to the model, or ``None``.
    """

    def __init__(self, model: WhisperModel, options: DecodingOptions, sampler=None):
        self.model = model
        self.options = options
        ctranslate2.set_random_seed(options.seed)
        multilingual = model.model.is_multilingual
        language = options.language or (None if multilingual else "en")
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, multilingual, task="transcribe", language=language or "en"
        )
        self.fixed_language = language
        self.workers = max(1, int(getattr(model.model, "num_workers", 1)))
        self.sampler = sampler if self.workers > 1 else None
        self.decoder = Decoder(model, self.tokenizer, options)
        self.segmenter = Segmenter(model, self.tokenizer)
        self.aligner = WordAligner(
            model, self.segmenter, options, language or "en", self._encode_windows
        )
        self.unpacked: Counter[str] = Counter()
        self.packing_stopped = False
        self.busy_s = 0.0
        self.first_batch_at: float | None = None

    @property
    def generate_calls(self) -> int:
        """CTranslate2 ``generate`` calls made (fallbacks and seeks included)."""
        return self.decoder.calls

    @property
    def align_s(self) -> float:
        """Seconds of word alignment, summed over the worker threads."""
        return self.aligner.seconds

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

        Whenever a worker is free it gets the next job (``core.scheduler.Scheduler``): the
        longest waiting windows, or a group of rows for temperature fallback; what a job leaves
        joins the queue at once, and the next wave joins whenever fewer than ``refill`` windows
        wait. Which windows share a batch depends on timing; at temperature 0 the text does not
        (CTranslate2 decodes each row alone), but packed windows re-packed from unfinished
        chunks do.

        Args:
            waves: Lists of chunks (from any number of files; keys unique across all waves),
                consumed lazily, one list at a time; an empty list while none is ready (a
                source still being written, ``core.streaming.StagedChunks``).
            refill: Waiting windows below which the next wave is taken in; default two batches
                per worker (``benchmarks/RESULTS.md`` compares it with one).

        Yields:
            Whenever a batch finishes chunks, their results (never an empty list); every
            chunk's result is yielded exactly once. A chunk still unfinished after
            ``core.scheduler.MAX_SEEK_ROUNDS`` windows keeps what it has.
        """
        refill = refill or 2 * self.workers * self.options.batch_size
        self.packing_stopped = False
        scheduler = Scheduler(self, refill)
        yield from scheduler.run(
            iter(waves), self.workers, self._decode_batch, self._fallback_group
        )

    def fallback_size(self) -> int:
        """Rows per temperature-fallback call.

        1 when each row samples on its own ``sampler``; else ``fallback_batch_size``, else
        ``batch_size`` (at most ``CPU_FALLBACK_BATCH`` on CPU).
        """
        if self.sampler is not None:
            return 1
        size = self.options.fallback_batch_size or self.options.batch_size
        if self.options.fallback_batch_size is None and self.model.model.device == "cpu":
            size = min(size, CPU_FALLBACK_BATCH)
        return size

    def max_length(self, prompt_length: int, frames: int) -> int:
        """Largest sequence (prompt included) a ``generate`` call may make (``Decoder``)."""
        return self.decoder.max_length(prompt_length, frames)

    def _decode_batch(self, batch: list) -> list:
        """First pass of a batch, a model error isolated to its window (``_isolated``)."""
        return self._isolated(self._first_pass, batch)

    def _isolated(self, run: Callable[[list[T]], list], items: list[T]) -> list:
        """``run(items)``, split in halves on an exception, down to single items.

        A single item that still raises gets its ``failed(error message)`` outcome.
        """
        try:
            return run(items)
        except Exception as error:  # any model error is isolated and recorded
            if len(items) == 1:
                logger.warning("chunk %s failed in the model: %s", items[0].keys[0], error)
                return [items[0].failed(f"{type(error).__name__}: {error}")]
            logger.warning("batch of %d failed (%s); splitting", len(items), error)
            middle = len(items) // 2
            return self._isolated(run, items[:middle]) + self._isolated(run, items[middle:])

    def _first_pass(self, batch: list[Window | PackedWindow]) -> list:
        """Decode a batch at the first temperature.

        Returns:
            Per window, its outcome: ``Kept`` or ``core.packing.Attributed`` (text for its
            chunks), ``Retry`` (failed the quality checks) or ``core.packing.Unpack`` (a packed
            window that failed them or was silence).
        """
        options = self.options
        encoder_output = self._encode_windows(batch)
        languages = self._languages(encoder_output, len(batch))
        frames = max(w.frames for w in batch)
        rows = self._generate(encoder_output, languages, options.temperatures[0], frames)
        host = self._host_copy(encoder_output)
        outcomes: list = [None] * len(batch)
        final: list[AlignRow] = []
        for index, (window, row) in enumerate(zip(batch, rows, strict=True)):
            encoded = None if host is None else host[index]
            if isinstance(window, PackedWindow) and (
                row.needs_fallback(options) or row.is_silence(options)
            ):
                # One hard or silent chunk must not send its neighbours to temperature
                # fallback or silence them: the window's chunks are decoded alone instead.
                outcomes[index] = Unpack(window, "window checks")
            elif row.needs_fallback(options) and len(options.temperatures) > 1:
                # A copy, not a view: a view would keep the whole batch's output alive.
                encoded = None if encoded is None else encoded.copy()
                outcomes[index] = Retry(window, languages[index], encoded, row)
            else:
                final.append(AlignRow(window, row, languages[index][0], encoded))
        whole_batch = encoder_output if len(final) == len(batch) else None
        aligned = iter(self.aligner.align(final, whole_batch))
        for index, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[index] = self._conclude(batch[index], next(aligned), languages[index])
        return outcomes

    def _conclude(self, window: Window | PackedWindow, row: Row, language: Language):
        """A kept row's outcome: its window's segments, or a packed window's attribution."""
        if isinstance(window, PackedWindow):
            threshold = self.options.compression_ratio_threshold
            return attribute(window, row, language, self.segmenter, threshold)
        return self._kept(window, row, language)

    def _kept(self, window: Window, row: Row, language: Language) -> Kept:
        return self.segmenter.kept(window, row, language, row.is_silence(self.options))

    def _encode_windows(self, windows: list) -> ctranslate2.StorageView:
        """The encoder output of windows, zero-padded to 30 s (``pad_features``)."""
        return self.model.encode(pad_features([window.features() for window in windows]))

    def _host_copy(self, encoder_output) -> np.ndarray | None:
        """The encoder output as a host array, kept for fallback; ``None`` on CUDA."""
        return np.array(encoder_output) if encoder_output.device == "cpu" else None

    def _fallback_group(self, group: list[Retry]) -> list:
        """Temperature fallback for a group of rows, temperature after temperature.

        Rows that pass the quality checks at a temperature drop out; the rest go on to the
        next. A row that fails at every temperature keeps its most likely result that is not
        repetitive, else the most likely of all (faster-whisper's rule).

        Returns:
            An outcome per row, ``Kept`` or ``Failed``, in the order the rows finished.
        """
        done: list[Kept | Failed] = []
        pending = [(retry, [retry.first]) for retry in group]
        # A fresh one-worker model per row (``fallback_size`` is then 1), made after the seed.
        model = None if self.sampler is None else self.sampler()
        for temperature in self.options.temperatures[1:]:
            if not pending:
                break
            sample = partial(self._sample, temperature=temperature, model=model)
            outcomes = self._isolated(sample, [retry for retry, _ in pending])
            still_pending = []
            for (retry, candidates), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Failed):
                    done.append(outcome)
                    continue
                candidates.append(outcome)
                if outcome.needs_fallback(self.options):
                    still_pending.append((retry, candidates))
                else:
                    done.append(self._kept(retry.window, outcome, retry.language))
            pending = still_pending
        threshold = self.options.compression_ratio_threshold
        chosen = [(retry, best_candidate(candidates, threshold)) for retry, candidates in pending]
        aligned = self.aligner.align(
            [AlignRow(retry.window, row, retry.language[0], retry.encoded) for retry, row in chosen]
        )
        for (retry, _), row in zip(chosen, aligned, strict=True):
            done.append(self._kept(retry.window, row, retry.language))
        return done

    def _sample(self, items: list[Retry], temperature: float, model=None) -> list[Row]:
        """Sample rows again at ``temperature`` on ``model`` (default the transcriber's).

        Returns:
            A row per item; those that pass the quality checks with their words aligned.
        """
        if items[0].encoded is not None:
            stacked = np.stack([item.encoded for item in items])
            encoder_output = ctranslate2.StorageView.from_array(stacked)
        else:
            encoder_output = self._encode_windows([item.window for item in items])
        languages = [item.language for item in items]
        frames = max(item.window.frames for item in items)
        rows = self._generate(encoder_output, languages, temperature, frames, model)
        passed = [
            (index, AlignRow(item.window, row, item.language[0], item.encoded))
            for index, (item, row) in enumerate(zip(items, rows, strict=True))
            if not row.needs_fallback(self.options)
        ]
        whole = encoder_output if len(passed) == len(items) else None
        aligned = self.aligner.align([entry for _, entry in passed], whole)
        for (index, _), row in zip(passed, aligned, strict=True):
            rows[index] = row
        return rows

    def _languages(self, encoder_output, batch_size: int) -> list[Language]:
        if self.fixed_language is not None:
            return [(self.fixed_language, 1.0)] * batch_size
        detected = self.model.model.detect_language(encoder_output)
        # Each row is [(token, probability), ...] best first; a token looks like "<|en|>".
        return [(row[0][0][2:-2], float(row[0][1])) for row in detected]

    def _generate(self, encoder_output, languages, temperature, frames, model=None) -> list[Row]:
        return self.decoder.generate(encoder_output, languages, temperature, frames, model)

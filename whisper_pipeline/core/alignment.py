"""Word timestamps for decoded rows: one batched cross-attention alignment per language.

faster-whisper's ``add_word_timestamps`` (its ``word_timestamps=True`` method: DTW over the
alignment heads' cross-attention, punctuation merged, long words at pauses cut) on the rows'
kept encoder output. Timing words must never lose a transcript: an alignment error is logged
and leaves the rows without words, their text kept. Counters are safe to update from the
worker threads that call ``WordAligner.align`` concurrently.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from whisper_pipeline.core.packing import PackedWindow
from whisper_pipeline.core.segments import Segmenter
from whisper_pipeline.core.types import DecodingOptions
from whisper_pipeline.core.windows import Row, Window

logger = logging.getLogger(__name__)

PREPEND_PUNCTUATIONS = "\"'“¿([{-"
"""Punctuation merged into the following word (faster-whisper's ``transcribe`` default)."""

APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
"""Punctuation merged into the preceding word (faster-whisper's ``transcribe`` default)."""


class AlignRow(NamedTuple):
    """A finished row to time the words of.

    Attributes:
        window: The window decoded.
        row: The decoded row.
        language: ISO 639-1 code of the row (the alignment prompt names it).
        encoded: The row's encoder output on the host, shape ``(1500, d_model)``, or ``None``
            (CUDA: the window is encoded again).
    """

    window: Window | PackedWindow
    row: Row
    language: str
    encoded: np.ndarray | None


class WordAligner:
    """Times the words of finished rows in batched ``Whisper.align`` calls.

    Args:
        model: The faster-whisper model the rows were decoded with.
        segmenter: Cuts rows into the pieces whose words are timed.
        options: Decoding options (``word_timestamps`` off makes ``align`` a no-op).
        language: The language the segmenter's tokenizer names (its alignment prompt).
        encode: ``windows -> encoder output``, for rows without a kept encoder output.

    Attributes:
        calls: ``add_word_timestamps`` calls made.
        seconds: Seconds spent in them, summed over threads.
        failures: Rows whose alignment raised (they keep their text, without words).
    """

    def __init__(
        self,
        model: WhisperModel,
        segmenter: Segmenter,
        options: DecodingOptions,
        language: str,
        encode: Callable[[list], object],
    ):
        self.model = model
        self.segmenter = segmenter
        self.options = options
        self.encode = encode
        self.calls = 0
        self.seconds = 0.0
        self.failures = 0
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Tokenizer] = {language: segmenter.tokenizer}

    def tokenizer_for(self, language: str) -> Tokenizer:
        """A tokenizer whose start sequence names ``language`` (alignment prompts)."""
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer,
                self.model.model.is_multilingual,
                task="transcribe",
                language=language,
            )
        return self._tokenizers[language]

    def align(self, rows: list[AlignRow], encoder_output=None) -> list[Row]:
        """The rows with their words timed (``Row.words``), in the order given.

        Rows that are silence or have no text, and rows whose alignment failed, come back
        unchanged.

        Args:
            rows: The finished rows.
            encoder_output: The encoder output of exactly these rows in this order, if at hand.
        """
        aligned = [entry.row for entry in rows]
        if not self.options.word_timestamps:
            return aligned
        by_language: dict[str, list[tuple[int, list[dict]]]] = {}
        eot = self.segmenter.tokenizer.eot
        for index, (window, row, language, _) in enumerate(rows):
            if row.is_silence(self.options) or not row.text:
                continue
            pieces, _ = self.segmenter.pieces(window, row)
            segments = [
                {"tokens": p["tokens"], "seek": window.offset, "start": p["start"],
                 "end": p["end"]}
                for p in pieces
            ]  # fmt: skip
            if any(t < eot for p in pieces for t in p["tokens"]):
                by_language.setdefault(language, []).append((index, segments))
        for language, group in by_language.items():
            indices = [index for index, _ in group]
            if encoder_output is not None and indices == list(range(len(rows))):
                encoded = encoder_output
            elif all(rows[i].encoded is not None for i in indices):
                stacked = np.stack([rows[i].encoded for i in indices])
                encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(stacked))
            else:
                encoded = self.encode([rows[i].window for i in indices])
            started = time.perf_counter()
            try:
                self.model.add_word_timestamps(
                    [segments for _, segments in group],
                    self.tokenizer_for(language),
                    encoded,
                    [rows[i].window.frames for i in indices],
                    PREPEND_PUNCTUATIONS,
                    APPEND_PUNCTUATIONS,
                    last_speech_timestamp=0.0,
                )
            except Exception as error:  # timing words must never lose the text
                with self._lock:
                    self.failures += len(group)
                logger.warning("word alignment failed for %d rows: %s", len(group), error)
                continue
            with self._lock:
                self.calls += 1
                self.seconds += time.perf_counter() - started
            for index, segments in group:
                words = [segment.get("words", []) for segment in segments]
                aligned[index] = replace(aligned[index], words=words)
        return aligned

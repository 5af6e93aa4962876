"""From a decoded row to ``Segment``s in file time, and where its chunk is decoded on.

A row's tokens are cut into pieces at its timestamp pairs by faster-whisper's splitter
(``Segmenter.pieces``); each piece becomes a ``Segment`` whose times, and its words' times, are
clamped to the chunk and mapped through the chunk's speech regions to seconds from the start
of the file (``make_segment``). A window Whisper left unfinished, or whose speech after its
last segment was skipped, gets a continuation window from there (``Segmenter.kept``).
"""

from collections.abc import Callable

from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio

from whisper_pipeline.core.chunking import chunk_time_map
from whisper_pipeline.core.types import Segment, Word
from whisper_pipeline.core.windows import Kept, Language, Row, Window

MIN_CONTINUATION_FRAMES = 30
"""Remainders shorter than 0.3 s after a seek are not decoded again (too short for a word)."""

MIN_SKIPPED_TAIL_FRAMES = 100
"""Speech left after a window's last segment that is decoded again: 1 s (100 frames)."""


class Segmenter:
    """Cuts a model's decoded rows into segments.

    Args:
        model: The faster-whisper model (its frame rate, time precision and splitter).
        tokenizer: The tokenizer the rows were decoded with.
    """

    def __init__(self, model: WhisperModel, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def frames_per_second(self) -> float:
        """Feature frames per second (100)."""
        return self.model.frames_per_second

    @property
    def time_precision(self) -> float:
        """Seconds per timestamp token (0.02)."""
        return self.model.time_precision

    def text(self, tokens: list[int]) -> str:
        """The tokens' text, stripped."""
        return self.tokenizer.decode(tokens).strip()

    def pieces(self, window, row: Row) -> tuple[list[dict], int]:
        """The window's complete segments (times in the chunk's timeline) and where to seek.

        faster-whisper's timestamp splitter, as its ``BatchedInferencePipeline`` uses it: it
        keeps complete segments and says where to seek when the window ended unfinished.

        Args:
            window: A ``Window`` or a ``core.packing.PackedWindow`` (``offset`` and ``frames``).
            row: Its decoded row.

        Returns:
            ``(pieces, seek)``: dicts with ``start``, ``end`` (seconds) and ``tokens``, and the
            frame (from the window's start) to go on from; 0 or ``frames`` when finished.
        """
        frames_per_second = self.frames_per_second
        pieces, seek, _ = self.model._split_segments_by_timestamps(
            tokenizer=self.tokenizer,
            tokens=row.tokens,
            time_offset=window.offset / frames_per_second,
            segment_size=window.frames,
            segment_duration=window.frames / frames_per_second,
            seek=0,
        )
        return pieces, seek

    def kept(self, window: Window, row: Row, language: Language, silent: bool) -> Kept:
        """A window's outcome: its segments in file time, and its continuation window, if any.

        The continuation is the rest of the chunk from the row's last timestamp, or after
        skipped speech of ``MIN_SKIPPED_TAIL_FRAMES`` or more; none for a remainder shorter
        than ``MIN_CONTINUATION_FRAMES``.

        Args:
            window: The window decoded.
            row: Its decoded row, aligned words in ``row.words`` if any.
            language: The row's language.
            silent: Whether the row is silence (``Row.is_silence``): no segments.
        """
        if silent or not row.text:
            return Kept(window, language, (), None)
        frames_per_second = self.frames_per_second
        offset_s = window.offset / frames_per_second
        pieces, seek = self.pieces(window, row)
        chunk = window.chunk
        time_map = chunk_time_map(list(chunk.speech_starts), list(chunk.speech_ends))
        chunk_end = chunk.duration_s

        def file_time(seconds: float, is_end: bool = False) -> float:
            clamped = min(max(seconds, 0.0), chunk_end)
            return time_map.get_original_time(clamped, is_end=is_end)

        segments = []
        for number, piece in enumerate(pieces):
            text = self.text(piece["tokens"])
            if not text:
                continue
            start = min(max(piece["start"], 0.0), chunk_end)
            end = min(max(piece["end"], start), chunk_end)
            words = row.words[number] if row.words else []
            segments.append(make_segment(text, start, end, words, row, file_time))
        if not 0 < seek < window.frames and pieces:
            # The window claims to be finished, but everything in a chunk is VAD speech: a tail
            # of over a second after the last segment is speech the model skipped (common at a
            # change of talker). Decode it as a continuation too.
            last_end = int(round((pieces[-1]["end"] - offset_s) * frames_per_second))
            if window.frames - last_end >= MIN_SKIPPED_TAIL_FRAMES:
                seek = last_end
        continuation = None
        if 0 < seek < window.frames and window.frames - seek >= MIN_CONTINUATION_FRAMES:
            continuation = Window(chunk, window.offset + seek)
        return Kept(window, language, tuple(segments), continuation)


def make_segment(
    text: str,
    start: float,
    end: float,
    words: list[dict],
    row: Row,
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
        row: The decoded row (its scores go on the segment).
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
        avg_logprob=float(row.avg_logprob),
        no_speech_prob=float(row.no_speech_prob),
        compression_ratio=get_compression_ratio(text),
        temperature=row.temperature,
        words=tuple(timed),
    )

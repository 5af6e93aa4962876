"""Window packing: short chunks from many files share one 30 s Whisper encoder window.

Whisper's encoder always runs on a 30 s window (3000 log-mel frames; CTranslate2 requires it),
so a short chunk costs as much encoder time as 30 s of speech. Short chunks, from the same or
different files, are laid one after another in a shared window with ``PACK_GAP_FRAMES`` of
silence between them (``pack_chunks``); the window is decoded in the same cross-file batches as
any other (``core.batching``), and its text goes back to each chunk by time (``attribute``):
every word, timed by cross-attention alignment, goes to the chunk its midpoint falls in. A chunk
whose text is in doubt never keeps it: it is packed again once, or decoded alone.
"""

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from whisper_pipeline.core.chunking import N_FRAMES, chunk_time_map
from whisper_pipeline.core.segments import Segmenter, make_segment
from whisper_pipeline.core.types import ChunkInput, ChunkResult, Segment
from whisper_pipeline.core.windows import FollowUp, Language, Row, Window

PACK_MAX_ITEM_FRAMES = 1000
"""Chunks of at most 10 s (1000 frames) are packed; longer ones keep a window of their own."""

PACK_GAP_FRAMES = 50
"""Silence between packed chunks: 0.5 s, long enough for Whisper to end a segment (it emits a
timestamp pair at a pause) and more than the 0.3 s a word's alignment spills over. Against 1 s
on 120 short clips, it made fewer windows, 12.7 s against 14.4 s of transcription, and WER 2.8%
against 3.0% (``benchmarks/RESULTS.md``)."""

PACK_MIN_WORD_PROBABILITY = 0.5
"""A packed chunk whose words' mean probability is below this is doubtful (``doubtful_chunks``)."""

PACK_MIN_COVERAGE = 0.5
"""A packed chunk whose words span less than this share of its speech is doubtful: its chunk
holds VAD speech only, so its words should cover most of it."""

PACK_EARLY_WORD_S = 0.1
"""A word that starts more than this before its chunk (seconds) is doubtful: a chunk begins with
VAD padding before its first word, and on 120 short clips no word started before its chunk."""

PACK_LATE_WORD_S = 0.5
"""A word that ends more than this after its chunk (seconds) is doubtful: it reaches into the
next chunk across the 0.5 s gap. The alignment of a chunk's last word spills past it (at most
0.12 s on 120 short clips, but up to 1.5 s on the corpus's natural speech); 0.2 s made 5 more
corpus chunks be decoded alone and packing 4% slower than none (``benchmarks/RESULTS.md``)."""

PACK_ZERO_WORD_S = 0.005
"""A word aligned to less than this (seconds) has no audio of its own; two such words in a row
in a chunk are doubtful: words the alignment squeezed in where no one said them (found on a clip
given its neighbour's "1. 2. 3." at zero duration)."""

PACK_SEGMENT_REACH_S = 0.25
"""How far past its timestamps (seconds) a segment reaches a chunk (``split_segments``): half
of the 0.5 s gap, so a segment timed into the gap still reaches only the chunk beside it."""

Span = tuple[float, float]
"""Where a chunk lies in its packed window: ``(start, end)`` in seconds from the window start."""


@dataclass(frozen=True)
class PackedWindow:
    """Short chunks from any files laid one after another in one window.

    ``PACK_GAP_FRAMES`` of silence separate them: the quietest frame of the two neighbours,
    which is silence as each chunk's own log-mel normalization floors it. ``starts`` are the
    frames where each chunk begins in the window. ``offset`` is always 0: a packed window is
    never continued; the chunks it leaves unfinished are packed again or decoded alone.
    """

    items: tuple[ChunkInput, ...]
    starts: tuple[int, ...]
    offset: int = 0

    @property
    def chunk(self) -> ChunkInput:
        """The first chunk (for log lines)."""
        return self.items[0]

    @property
    def frames(self) -> int:
        """Frames from the window start to the end of its last chunk."""
        return self.starts[-1] + self.items[-1].features.shape[-1]

    @property
    def keys(self) -> tuple[Hashable, ...]:
        """The keys of the chunks the window holds, in window order."""
        return tuple(item.key for item in self.items)

    def failed(self, error: str) -> "Unpack":
        """The outcome when the model raised on this window alone: its chunks go alone."""
        return Unpack(self, "failed window")

    def features(self) -> np.ndarray:
        """The window's log-mel features, shape ``(n_mels, frames)``, float32."""
        first = self.items[0].features
        window = np.empty((first.shape[0], self.frames), dtype=np.float32)
        end = 0
        for index, (item, start) in enumerate(zip(self.items, self.starts, strict=True)):
            if start > end:
                floor = min(float(item.features.min()), float(self.items[index - 1].features.min()))
                window[:, end:start] = floor
            end = start + item.features.shape[-1]
            window[:, start:end] = item.features
        return window

    def spans(self, frames_per_second: float) -> list[Span]:
        """Each chunk's ``(start, end)`` in the window, in seconds."""
        return [
            (start / frames_per_second, (start + item.features.shape[-1]) / frames_per_second)
            for item, start in zip(self.items, self.starts, strict=True)
        ]


def pack_chunks(
    chunks: list[ChunkInput],
    max_item_frames: int = PACK_MAX_ITEM_FRAMES,
    gap_frames: int = PACK_GAP_FRAMES,
) -> tuple[list[PackedWindow], list[ChunkInput]]:
    """Pack short chunks into shared 30 s windows, first-fit decreasing by length.

    Args:
        chunks: Chunks from any files.
        max_item_frames: Longest chunk that is packed, in feature frames (100 per second).
        gap_frames: Silence between two packed chunks, frames.

    Returns:
        ``(packed, alone)``: windows of two or more chunks, and the chunks decoded alone (the
        long ones, and short ones no other chunk fitted beside).
    """
    short = sorted(
        (c for c in chunks if c.features.shape[-1] <= max_item_frames),
        key=lambda c: -c.features.shape[-1],
    )
    bins: list[list[ChunkInput]] = []
    ends: list[int] = []
    for chunk in short:
        frames = chunk.features.shape[-1]
        for index, end in enumerate(ends):
            if end + gap_frames + frames <= N_FRAMES:
                bins[index].append(chunk)
                ends[index] = end + gap_frames + frames
                break
        else:
            bins.append([chunk])
            ends.append(frames)
    packed, alone = [], [c for c in chunks if c.features.shape[-1] > max_item_frames]
    for group in bins:
        if len(group) == 1:
            alone.append(group[0])
            continue
        starts, position = [], 0
        for chunk in group:
            starts.append(position)
            position += chunk.features.shape[-1] + gap_frames
        packed.append(PackedWindow(tuple(group), tuple(starts)))
    return packed, alone


def nearest_span(spans: list[Span], seconds: float) -> int:
    """Index of the span holding ``seconds``, else of the nearest one (a time in a gap)."""
    distances = [max(start - seconds, seconds - end, 0.0) for start, end in spans]
    return distances.index(min(distances))


def assign_words(
    pieces: list[dict], words: list[list[dict]] | None, spans: list[Span]
) -> list[list[tuple[dict, list[dict]]]]:
    """Give a packed window's segments and words to the chunks they belong to.

    A word goes to the chunk its midpoint falls in (or the nearest, when it straddles a gap),
    so a segment that runs across a boundary is split there. A word aligned wholly inside a gap
    belongs to no chunk and is dropped: no audio says it, and Whisper repeats a neighbour's word
    there now and then. Without word timings a segment goes whole to the chunk it overlaps most.

    Args:
        pieces: The window's segments: dicts with ``start`` and ``end`` (seconds from the
            window start) and ``tokens``, as faster-whisper's timestamp splitter gives them.
        words: Per piece, its words (dicts with ``word``, ``start``, ``end``, ``probability``,
            seconds from the window start), or ``None`` when words were not aligned.
        spans: Each chunk's ``(start, end)`` in the window, seconds.

    Returns:
        Per chunk, ``(piece, its words in that chunk)`` pairs in window order; the word list is
        empty when there were no word timings.
    """
    assigned: list[list[tuple[dict, list[dict]]]] = [[] for _ in spans]
    for number, piece in enumerate(pieces):
        piece_words = words[number] if words else None
        if piece_words:
            groups: dict[int, list[dict]] = {}
            for word in piece_words:
                middle = (word["start"] + word["end"]) / 2
                nearest = nearest_span(spans, middle)
                start, end = spans[nearest]
                in_gap = word["end"] < start or word["start"] > end
                if in_gap or (word["start"] == word["end"] and not start <= middle <= end):
                    continue
                groups.setdefault(nearest, []).append(word)
            for index, group in groups.items():
                assigned[index].append((piece, group))
        elif piece_words is None:
            overlaps = [min(end, piece["end"]) - max(start, piece["start"]) for start, end in spans]
            assigned[overlaps.index(max(overlaps))].append((piece, []))
    return assigned


def split_segments(spans: list[Span], assigned: list[list[tuple[dict, list[dict]]]]) -> set[int]:
    """Chunks whose text only the words' alignment placed: Whisper's segments do not confirm it.

    That is a segment whose words went to two or more chunks (Whisper did not end it at the
    gap between them), or to a chunk its own timestamps do not reach within half a gap. There
    only the alignment says which chunk a word belongs to, and on repetitive speech it says it
    wrong with no other sign. Found on three clips saying "one, two, three": in one segment
    they came out "1, 2, 3", "1, 2," and "3, 1, 2, 3", every word likely, none early, late or
    zero-length; with one segment per word, the "3." Whisper timed at 12-13 s was aligned at
    13.8 s, into the next clip. On distinct speech the alignment is usually right, so such
    chunks are packed again once, beside other chunks, and decoded alone if it happens again.

    Args:
        spans: Each chunk's ``(start, end)`` in the window, seconds.
        assigned: ``assign_words``'s result for the window.

    Returns:
        Indices of the chunks whose words the segments do not confirm, and of the chunks those
        segments' timestamps reach.
    """
    shared = set()
    for _, owners, reached, _ in _segment_chunks(spans, assigned):
        if len(owners) > 1 or not owners <= reached:
            shared |= owners | reached
    return shared


def _segment_chunks(
    spans: list[Span], assigned: list[list[tuple[dict, list[dict]]]]
) -> list[tuple[dict, set[int], set[int], list[dict]]]:
    """The chunks each segment with timed words touches.

    Returns:
        Per segment: ``(segment, chunks its words went to, chunks its timestamps reach within
        PACK_SEGMENT_REACH_S, its words)``.
    """
    found: dict[int, tuple[dict, set[int], list[dict]]] = {}
    for index, pairs in enumerate(assigned):
        for piece, words in pairs:
            if words:
                entry = found.setdefault(id(piece), (piece, set(), []))
                entry[1].add(index)
                entry[2].extend(words)
    return [
        (
            piece,
            owners,
            {
                index
                for index, (start, end) in enumerate(spans)
                if piece["start"] - PACK_SEGMENT_REACH_S < end
                and piece["end"] + PACK_SEGMENT_REACH_S > start
            },
            words,
        )
        for piece, owners, words in found.values()
    ]


def doubtful_chunks(
    spans: list[Span],
    assigned: list[list[tuple[dict, list[dict]]]],
    complete_s: float | None = None,
) -> set[int]:
    """Chunks whose words may be someone else's, and the neighbours they may belong to.

    A chunk is doubtful, with both its neighbours, when its words' mean probability is below
    ``PACK_MIN_WORD_PROBABILITY`` or they span less than ``PACK_MIN_COVERAGE`` of its speech:
    the sign that Whisper skipped it and a neighbour's word was aligned into its span (found on a
    2 s "one, two, three" packed before "Then ..."). It is doubtful with the neighbour on that
    side when one of its words starts ``PACK_EARLY_WORD_S`` before it or ends ``PACK_LATE_WORD_S``
    after it: a word aligned across a gap, which by its midpoint may have gone to the wrong side
    (found on two clips saying the same "one, two, three": "1, 2," and "3, 1, 2, 3"). A chunk
    two away is past a whole chunk and two gaps, out of reach of an alignment's drift. Two
    words in a row aligned to no time (``PACK_ZERO_WORD_S``) make a chunk doubtful with both
    neighbours. A segment whose words' mean probability is below ``PACK_MIN_WORD_PROBABILITY``
    makes every chunk it touches doubtful: a word Whisper was unsure of, at a chunk's edge, may
    be a neighbour's word said again (found: a clip's "3." repeated at probability 0.0 and
    aligned into the next clip, whose eight words kept its mean probability high). A chunk
    that ends by ``complete_s`` and got no text makes both its neighbours doubtful: they may
    have taken its words.

    Args:
        spans: Each chunk's ``(start, end)`` in the window, seconds.
        assigned: ``assign_words``'s result for the window.
        complete_s: Where the window's complete text ends, seconds; chunks ending later were
            left for a next window, so their lack of text says nothing. ``None``: the no-text
            rule is not applied.

    Returns:
        Indices of the chunks to decode alone.
    """
    doubtful = set()
    for index, (span, pairs) in enumerate(zip(spans, assigned, strict=True)):
        if not pairs and complete_s is not None and span[1] <= complete_s:
            doubtful.update({index - 1, index + 1})
        words = [word for _, group in pairs for word in group]
        if not words:
            continue
        probability = sum(word["probability"] for word in words) / len(words)
        covered = max(w["end"] for w in words) - min(w["start"] for w in words)
        if probability < PACK_MIN_WORD_PROBABILITY or covered < PACK_MIN_COVERAGE * (
            span[1] - span[0]
        ):
            doubtful.update({index - 1, index, index + 1})
        if min(word["start"] for word in words) < span[0] - PACK_EARLY_WORD_S:
            doubtful.update({index - 1, index})
        if max(word["end"] for word in words) > span[1] + PACK_LATE_WORD_S:
            doubtful.update({index, index + 1})
        empty = [word["end"] - word["start"] < PACK_ZERO_WORD_S for word in words]
        if any(a and b for a, b in zip(empty, empty[1:], strict=False)):
            doubtful.update({index - 1, index, index + 1})
    for _, owners, reached, words in _segment_chunks(spans, assigned):
        if sum(word["probability"] for word in words) / len(words) < PACK_MIN_WORD_PROBABILITY:
            doubtful |= owners | reached
    return {index for index in doubtful if 0 <= index < len(spans)}


@dataclass(frozen=True)
class Unpack:
    """A packed window whose chunks are all to be decoded alone.

    ``reason`` is ``"window checks"`` (the row failed the quality checks or was silence: one
    hard or silent chunk must not send its neighbours to temperature fallback or silence them)
    or ``"failed window"`` (the model raised on it).
    """

    window: PackedWindow
    reason: str

    def record(self, results: dict[Hashable, ChunkResult]) -> FollowUp:
        """Nothing recorded: every chunk gets a window of its own."""
        items = self.window.items
        return FollowUp(
            windows=tuple(Window(item, 0) for item in items),
            reasons=((self.reason, len(items)),),
            packed=len(items),
        )


@dataclass(frozen=True)
class Attributed:
    """A packed window's text given back to its chunks (``attribute``).

    Attributes:
        window: The packed window.
        language: The row's language.
        kept: The chunks that keep their text, each with its segments in file time.
        alone: Chunks to decode alone.
        unfinished: Chunks to pack again.
        reasons: Chunks in ``alone`` or ``unfinished``, by reason, in the order met.
    """

    window: PackedWindow
    language: Language
    kept: tuple[tuple[ChunkInput, tuple[Segment, ...]], ...]
    alone: tuple[ChunkInput, ...]
    unfinished: tuple[ChunkInput, ...]
    reasons: tuple[tuple[str, int], ...]

    def record(self, results: dict[Hashable, ChunkResult]) -> FollowUp:
        """Give each kept chunk its segments and the window's language."""
        for item, segments in self.kept:
            result = results[item.key]
            result.language, result.language_probability = self.language
            result.segments.extend(segments)
        return FollowUp(
            windows=tuple(Window(item, 0) for item in self.alone),
            unfinished=self.unfinished,
            reasons=self.reasons,
            packed=len(self.window.items),
        )


def attribute(
    packed: PackedWindow,
    row: Row,
    language: Language,
    segmenter: Segmenter,
    compression_ratio_threshold: float,
) -> Attributed:
    """Attribute a packed window's text to its chunks, by the times of its words.

    What can go wrong, and what is done about it:

    - Whisper skips a chunk, and the alignment puts a neighbour's first word in its span. Such
      a chunk's words are unlikely or cover little of its speech (``doubtful_chunks``); it and
      its two neighbours are decoded alone.
    - Whisper does not end a segment at a gap, or times a segment apart from its words, and
      only the alignment says which chunk a word belongs to (wrongly, on repetitive speech,
      with no other sign): those chunks are packed again once, beside other chunks, and
      decoded alone if it happens again (``split_segments``).
    - A chunk gets no text: a neighbour may have taken its words; both neighbours are decoded
      alone with it (never silence a chunk for its neighbours' sake).
    - Whisper leaves the window's last utterance for "the next window" (it ends on a lone
      start timestamp): chunks past the last complete segment are packed again, once, with the
      other unfinished chunks at hand; a chunk left unfinished twice is decoded alone.
    - A chunk's own text is too repetitive (compression ratio above the threshold): it is
      decoded alone. (A hard or silent window is not attributed at all: ``Unpack``.)

    Args:
        packed: The packed window.
        row: Its decoded row, which passed the quality checks; ``row.words`` per piece when
            words were aligned.
        language: The row's language.
        segmenter: Cuts the row into pieces, times in seconds from the window start.
        compression_ratio_threshold: A chunk whose segments are more repetitive is decoded
            alone (``DecodingOptions.compression_ratio_threshold``).
    """
    items = packed.items
    pieces, seek = segmenter.pieces(packed, row)
    fps = segmenter.frames_per_second
    spans = packed.spans(fps)
    # Complete up to the last timestamp token: text after it was cut (token budget) or
    # left for a continuation; a chunk ending within half a gap of it is complete.
    slack_s = PACK_GAP_FRAMES / fps / 2
    timestamp_begin = segmenter.tokenizer.timestamp_begin
    timestamps = [t for t in row.tokens if t >= timestamp_begin]
    complete_s = packed.frames / fps if not 0 < seek < packed.frames else seek / fps
    last_s = (timestamps[-1] - timestamp_begin) * segmenter.time_precision
    complete_s = min(complete_s, (last_s if timestamps else 0.0) + slack_s)
    if pieces:
        complete_s = min(complete_s, max(p["end"] for p in pieces) + slack_s)
    assigned = assign_words(pieces, row.words, spans)
    doubtful = doubtful_chunks(spans, assigned, complete_s)
    shared = split_segments(spans, assigned)
    reasons: Counter[str] = Counter()
    alone, unfinished, kept = [], [], []
    for index, item in enumerate(items):
        start_s, end_s = spans[index]
        if index in doubtful:
            reasons["doubtful words"] += 1
            alone.append(item)
            continue
        if end_s > complete_s or index in shared:
            reasons["unfinished" if end_s > complete_s else "shared segment"] += 1
            unfinished.append(item)
            continue
        segments = packed_segments(item, start_s, assigned[index], row, segmenter)
        repetitive = any(s.compression_ratio > compression_ratio_threshold for s in segments)
        if not segments or repetitive:
            reasons["repetitive" if repetitive else "no text"] += 1
            alone.append(item)
            continue
        kept.append((item, tuple(segments)))
    return Attributed(
        packed, language, tuple(kept), tuple(alone), tuple(unfinished), tuple(reasons.items())
    )


def packed_segments(
    item: ChunkInput,
    start_s: float,
    assigned: list[tuple[dict, list[dict]]],
    row: Row,
    segmenter: Segmenter,
) -> list[Segment]:
    """A packed chunk's segments from the pieces (and words) attributed to it.

    Times are moved from the window to the chunk (less ``start_s``, seconds), clamped to the
    chunk, and mapped to the file through the chunk's speech regions, as for a chunk decoded
    alone.

    Args:
        item: The chunk.
        start_s: Where it starts in the packed window, seconds.
        assigned: Its ``(piece, words)`` pairs (``assign_words``).
        row: The window's decoded row (its scores go on the segments).
        segmenter: Decodes a piece's tokens when it has no words.
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
            text = segmenter.text(piece["tokens"])
            begin, finish = piece["start"], piece["end"]
        if text:
            segments.append(make_segment(text, begin, finish, words, row, file_time))
    return segments

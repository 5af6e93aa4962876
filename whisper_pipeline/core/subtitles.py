"""Subtitle cues from a transcript's segments and words, rendered as SubRip (SRT) and WebVTT.

Pure functions over ``transcript_segments`` and ``transcript_words`` rows (dicts), times in
seconds from the file's start. Cue rules (``build_cues``): at most ``MAX_LINE_CHARS`` a line
(a single longer word is never split) and ``MAX_LINES`` lines a cue; words joined as the
segment's text writes them; at most ``MAX_CUE_S`` and, where the next cue leaves room, at least
``MIN_CUE_S`` a cue; timed by the words (a segment without words shares its span by characters);
breaks prefer a segment's end or a pause, then a sentence's end, a clause mark, the place before
a conjunction or preposition, with fewer and evenly filled cues among equals (one
dynamic-programming pass); cues in time order, never overlapping, within the file.
"""

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MAX_LINE_CHARS = 42
"""Characters per line at most: the Netflix Timed Text Style Guide's English template
("Character Limitation: 42 characters per line")."""

MAX_LINES = 2
"""Lines per cue at most: Netflix Timed Text Style Guide (General Requirements, "2 lines
maximum") and the BBC Subtitle Guidelines (subtitles should not normally exceed two lines)."""

MAX_CUE_S = 7.0
"""Seconds a cue stays on screen at most: Netflix Timed Text Style Guide (General Requirements,
"Maximum duration: 7 seconds per subtitle event")."""

MIN_CUE_S = 5 / 6
"""Seconds a cue stays on screen at least, where the next cue's start leaves room: Netflix Timed
Text Style Guide (General Requirements, "Minimum duration: 5/6 (five-sixths) of a second per
subtitle event"). A single spoken word is often shorter than that."""

PAUSE_S = 1.0
"""Silence between two words (seconds) that makes a break there as good as a segment's end."""

SENTENCE_END = re.compile(r"[.?!…。？！]['\"’”)\]]*$")
"""A word that ends a sentence (closing quotes and brackets may follow the mark)."""

CLAUSE_END = re.compile(r"[,;:–—，、；：]['\"’”)\]]*$")
"""A word that ends a clause."""

BREAK_BEFORE = frozenset(
    "and but or nor so yet because although though while when where which who that if unless "
    "until to of in on at by for from with without about into over under after before "
    "between through".split()
)
"""English conjunctions and prepositions that a line may start with: the Netflix guide breaks
lines "before conjunctions" and "before prepositions"."""

# Costs of ending a cue or a line after a word, by what follows it (lower is better).
_BREAK_SEGMENT = 0
_BREAK_SENTENCE = 1
_BREAK_CLAUSE = 2
_BREAK_BEFORE_WORD = 3
_BREAK_ANYWHERE = 5
_BREAK_ATTACHED = 6  # inside what the text writes as one word ("self-|substantial")

_CUE_COST = 4.0
"""Cost of one more cue: a cue breaks off at a segment's end rather than mid-sentence when that
takes one more cue, but not two more."""

_EPSILON_S = 1e-6
"""Slack in duration comparisons (seconds), so float sums never exceed a limit by rounding."""


@dataclass(frozen=True)
class Cue:
    """One subtitle: text lines shown from ``start_s`` to ``end_s``.

    Attributes:
        start_s: When the cue appears, in seconds from the file's start.
        end_s: When it disappears, in seconds from the file's start.
        lines: One or two lines of text (``MAX_LINES``).
    """

    start_s: float
    end_s: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class _Token:
    """A word to place in a cue.

    Attributes:
        text: The word as written.
        start_s: Its start, in seconds from the file's start.
        end_s: Its end, in seconds from the file's start.
        break_cost: Cost of a cue or line break after it (``_BREAK_*``).
        spaced: Whether a space separates it from the word before (``False`` for a word the
            transcript writes attached: ``-substantial`` after ``self``, most CJK words).
    """

    text: str
    start_s: float
    end_s: float
    break_cost: int
    spaced: bool = True


def _clean(text: str) -> str:
    """``text`` with runs of whitespace as single spaces, stripped."""
    return " ".join(text.split())


def _word_break_cost(text: str, next_text: str, next_spaced: bool) -> int:
    """Cost of a break between two words of a segment: the first's punctuation, the next word."""
    if SENTENCE_END.search(text):
        return _BREAK_SENTENCE
    if CLAUSE_END.search(text):
        return _BREAK_CLAUSE
    if not next_spaced:
        return _BREAK_ATTACHED
    if next_text.lower().strip("\"'“‘(") in BREAK_BEFORE:
        return _BREAK_BEFORE_WORD
    return _BREAK_ANYWHERE


def _spread(text: str, start_s: float, end_s: float) -> list[tuple[str, float, float, bool]]:
    """Words of a segment without word timings, its span shared in proportion to characters.

    Each word gets a share of ``[start_s, end_s]`` proportional to its length plus one (for the
    space after it), so a long segment's cues split where its text does.
    """
    parts = text.split()
    if not parts:
        return []
    weights = [len(part) + 1 for part in parts]
    total = sum(weights)
    span = max(0.0, end_s - start_s)
    spread, done = [], 0
    for part, weight in zip(parts, weights, strict=True):
        first = start_s + span * done / total
        done += weight
        spread.append((part, first, start_s + span * done / total, True))
    return spread


def _spacing(texts: list[str], segment_text: str) -> list[bool]:
    """Whether each word is preceded by a space, as the segment's text writes them.

    Words are found in the text in order (only spaces may come before each); a word found right
    where the previous one ends is attached to it. A word not found there counts as spaced, and
    so does the word after it.
    """
    spaced, position, previous_found = [], 0, False
    for text in texts:
        found = segment_text.find(text, position)
        if found < 0 or segment_text[position:found].strip():
            spaced.append(True)
            previous_found = False
            continue
        spaced.append(not previous_found or found > position)
        position, previous_found = found + len(text), True
    return spaced


def _tokens(segments: Sequence[Mapping], words: Sequence[Mapping]) -> list[_Token]:
    """The file's words in order, with their break costs.

    Times never go back: a word starts no earlier than the word before it and ends no earlier
    than it starts or than the word before it ends (alignment can return such times).
    """
    words_of = defaultdict(list)
    for word in words:
        words_of[word["segment_index"]].append(word)
    segments_by_index = {segment["segment_index"]: segment for segment in segments}
    units = []  # one list of (text, start, end, spaced) per segment
    for index in sorted(set(segments_by_index) | set(words_of)):
        segment = segments_by_index.get(index)
        timed = sorted(words_of.get(index, ()), key=lambda w: w["word_index"])
        timed = [(_clean(w["word"]), w["start_s"], w["end_s"]) for w in timed]
        timed = [word for word in timed if word[0]]
        if timed:
            texts = [text for text, _, _ in timed]
            spacing = _spacing(texts, segment["text"] if segment else " ".join(texts))
            unit = [(*word, spaced) for word, spaced in zip(timed, spacing, strict=True)]
        elif segment is not None:
            unit = _spread(segment["text"], segment["start_s"], segment["end_s"])
        else:
            unit = []
        if unit:
            units.append(unit)
    tokens: list[_Token] = []
    last_start = last_end = 0.0
    for unit in units:
        for position, (text, start, end, spaced) in enumerate(unit):
            start = max(float(start), last_start)
            end = max(float(end), start, last_end)
            last_start, last_end = start, end
            after = unit[position + 1] if position + 1 < len(unit) else None
            if after is None or after[1] - end >= PAUSE_S:
                cost = _BREAK_SEGMENT
            else:
                cost = _word_break_cost(text, after[0], after[3])
            tokens.append(_Token(text, start, end, cost, spaced))
    return tokens


def _join(tokens: Sequence[_Token]) -> str:
    """The text of tokens on one line: spaced words after a space, attached ones without."""
    return "".join((" " if t.spaced and n else "") + t.text for n, t in enumerate(tokens))


def _line_ends(tokens: Sequence[_Token]) -> list[int]:
    """For each token ``i``, the end (exclusive) of the longest line that starts with it.

    A line holds at least its first token, even one longer than ``MAX_LINE_CHARS``.
    ``ends[len(tokens)]`` is ``len(tokens)``, so two greedy lines can be chained.
    """
    count = len(tokens)
    ends = [count] * (count + 1)
    end, width = 0, 0  # the line [i, end) is ``width`` characters wide
    for i in range(count):
        if end <= i:
            end, width = i + 1, len(tokens[i].text)
        while end < count:
            added = len(tokens[end].text) + tokens[end].spaced
            if width + added > MAX_LINE_CHARS:
                break
            width += added
            end += 1
        ends[i] = end
        # Drop token i: the next one starts the line, without its space.
        width -= len(tokens[i].text) + (tokens[i + 1].spaced if end > i + 1 else 0)
    return ends


def _layout(tokens: Sequence[_Token]) -> tuple[str, ...]:
    """Lines of one cue: one line when it fits, else the best of the two-line splits that fit.

    A split is scored by the break cost after its first line plus its imbalance (0 for equal
    lines, up to 2), so a line ends at punctuation unless that leaves the lines very uneven.
    """
    joined = _join(tokens)
    if len(joined) <= MAX_LINE_CHARS or len(tokens) == 1:
        return (joined,)
    best = None
    for split in range(1, len(tokens)):
        first, second = _join(tokens[:split]), _join(tokens[split:])
        if len(first) > MAX_LINE_CHARS and split > 1:
            break
        if len(second) > MAX_LINE_CHARS and len(tokens) - split > 1:
            continue
        cost = tokens[split - 1].break_cost + 2 * abs(len(first) - len(second)) / len(joined)
        if best is None or cost < best[0]:
            best = (cost, (first, second))
    if best is None:
        raise ValueError(f"no two-line layout of {joined!r}")  # the cue builder never asks
    return best[1]


def _partition(tokens: Sequence[_Token]) -> list[tuple[int, int]]:
    """Split tokens into cues ``[(start, end), ...]`` of least total cost (dynamic programming).

    A cue may hold tokens ``[i, j)`` when they fit ``MAX_LINES`` greedy lines and last at most
    ``MAX_CUE_S`` (a single token always may). Its cost is ``_CUE_COST``, plus the break cost
    after its last token, plus ``(1 - fill)**2`` where ``fill`` is its share of the characters a
    cue can hold (evenly filled cues beat a full one and a scrap).
    """
    count = len(tokens)
    prefix = [0]  # characters of tokens[:k], each with its space
    for token in tokens:
        prefix.append(prefix[-1] + len(token.text) + token.spaced)
    ends = _line_ends(tokens)
    capacity = MAX_LINES * MAX_LINE_CHARS
    best = [0.0] + [float("inf")] * count
    choice = [0] * (count + 1)
    for j in range(1, count + 1):
        for i in range(j - 1, -1, -1):
            if i < j - 1:
                reach = i
                for _ in range(MAX_LINES):
                    reach = ends[reach]
                if reach < j or tokens[j - 1].end_s - tokens[i].start_s > MAX_CUE_S + _EPSILON_S:
                    break  # both only get worse as the cue grows to the left
            fill = min(1.0, (prefix[j] - prefix[i] - tokens[i].spaced) / capacity)
            cost = best[i] + _CUE_COST + tokens[j - 1].break_cost + (1 - fill) ** 2
            if cost < best[j]:
                best[j], choice[j] = cost, i
    spans = []
    j = count
    while j > 0:
        spans.append((choice[j], j))
        j = choice[j]
    return spans[::-1]


def build_cues(
    segments: Sequence[Mapping],
    words: Sequence[Mapping] = (),
    duration_s: float | None = None,
) -> list[Cue]:
    """Subtitle cues of one file (the rules are in this module's docstring).

    Args:
        segments: The file's ``transcript_segments`` rows (``segment_index``, ``start_s``,
            ``end_s``, ``text``; times in seconds from the file's start).
        words: The file's ``transcript_words`` rows (``segment_index``, ``word_index``,
            ``word``, ``start_s``, ``end_s``); a segment without words is timed from its own
            span.
        duration_s: The file's duration in seconds, if known: no cue ends after it.

    Returns:
        Cues in time order, never overlapping; empty when no segment has text.
    """
    tokens = _tokens(segments, words)
    if duration_s is not None:
        limit = max(0.0, float(duration_s))
        tokens = [
            _Token(t.text, min(t.start_s, limit), min(t.end_s, limit), t.break_cost, t.spaced)
            for t in tokens
        ]
    spans = _partition(tokens)
    starts = [tokens[i].start_s for i, _ in spans]
    cues = []
    for number, (i, j) in enumerate(spans):
        start = starts[number]
        following = starts[number + 1] if number + 1 < len(spans) else None
        end = min(tokens[j - 1].end_s, start + MAX_CUE_S)
        if end - start < MIN_CUE_S:
            end = start + MIN_CUE_S
            if duration_s is not None:
                end = min(end, max(start, float(duration_s)))
        if following is not None:
            end = min(end, following)
        cues.append(Cue(start, end, _layout(tokens[i:j])))
    return cues


def _timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<separator>mmm``, rounded to the millisecond (hours grow past two digits)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(cues: Iterable[Cue]) -> str:
    """Render cues as SubRip: numbered from 1, ``HH:MM:SS,mmm`` times, a blank line between.

    SubRip has no escaping: the text is written as it is (a cue never holds an empty line).

    Args:
        cues: Cues in time order.

    Returns:
        The file's text (empty for no cues), ending with a newline.
    """
    blocks = [
        f"{number}\n{_timestamp(c.start_s, ',')} --> {_timestamp(c.end_s, ',')}\n{c.text}"
        for number, c in enumerate(cues, start=1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _vtt_escape(text: str) -> str:
    """Cue text with ``&``, ``<`` and ``>`` as character references (WebVTT cue text syntax)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: Iterable[Cue]) -> str:
    """Render cues as WebVTT: the ``WEBVTT`` header, ``HH:MM:SS.mmm`` times, a blank line between.

    ``&``, ``<`` and ``>`` in the text are escaped, so no word is read as markup and no cue
    text holds ``-->``.

    Args:
        cues: Cues in time order.

    Returns:
        The file's text, ending with a newline.
    """
    blocks = [
        f"{_timestamp(c.start_s, '.')} --> {_timestamp(c.end_s, '.')}\n{_vtt_escape(c.text)}"
        for c in cues
    ]
    return "\n\n".join(["WEBVTT", *blocks]) + "\n"


EXPORT_SLUG_MAX_CHARS = 80
"""Characters of the readable part of an export name at most (names stay far below the 255
bytes file systems allow)."""

EXPORT_ID_CHARS = 8
"""Hex characters of the file_id in an export name; the full id where these would collide."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FILE_ID = re.compile(r"[0-9a-f]+")


def export_slug(relative_path: str) -> str:
    """The readable part of an export name: ``relative_path`` reduced to safe ASCII.

    Accents are dropped (NFKD), path separators and every character other than ASCII letters,
    digits, ``.``, ``_`` and ``-`` become ``_`` (runs of ``_`` and of ``.`` collapse to one), the
    ends lose ``.``, ``_`` and ``-`` (no hidden names, never ``.`` or ``..``), and the result is
    cut to ``EXPORT_SLUG_MAX_CHARS``. Nothing is left (a name of only non-Latin letters, say):
    ``audio``. Different paths may share a slug; ``export_stems`` adds the file id.

    Args:
        relative_path: The file's path below ``raw/YYYY-MM-DD/`` (any characters).

    Returns:
        A non-empty string of ``[A-Za-z0-9._-]`` that does not start with ``.``.
    """
    ascii_text = (
        unicodedata.normalize("NFKD", relative_path).encode("ascii", "ignore").decode("ascii")
    )
    slug = _UNSAFE.sub("_", ascii_text.replace("/", "_"))
    slug = re.sub(r"\.{2,}", ".", re.sub(r"_{2,}", "_", slug)).strip("._-")
    slug = slug[:EXPORT_SLUG_MAX_CHARS].rstrip("._-")
    return slug or "audio"


def export_stem(relative_path: str, file_id: str, id_chars: int = EXPORT_ID_CHARS) -> str:
    """Export name without extension: ``<export_slug(relative_path)>-<file_id[:id_chars]>``.

    Args:
        relative_path: The file's path below ``raw/YYYY-MM-DD/``.
        file_id: The file's ``audio_files.file_id`` (lowercase hex).
        id_chars: How much of the id to keep.

    Returns:
        The stem, e.g. ``Telephone_Calls_unicode_call_8k.WAV-1a2b3c4d``.

    Raises:
        ValueError: ``file_id`` is not lowercase hex.
    """
    if not _FILE_ID.fullmatch(file_id):
        raise ValueError(f"file_id must be lowercase hex, got {file_id!r}")
    return f"{export_slug(relative_path)}-{file_id[:id_chars]}"


def export_stems(files: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Unique export stems of a partition's files, also on case-insensitive file systems.

    Each file gets ``export_stem`` with ``EXPORT_ID_CHARS`` of its id; files whose stems would
    then be equal ignoring case get their full id instead. Full ids are the partition's
    distinct ``file_id`` keys, and a short stem ends in ``-`` plus 8 hex characters where a full
    one has hex, so no stem can equal another.

    Args:
        files: ``(file_id, relative_path)`` of each file, file ids distinct.

    Returns:
        Stem by file id.

    Raises:
        ValueError: Two files share an id, or an id is not lowercase hex.
    """
    files = list(files)
    ids = [file_id for file_id, _ in files]
    if len(set(ids)) != len(ids):
        raise ValueError("file ids must be distinct")
    short = {file_id: export_stem(path, file_id) for file_id, path in files}
    users = defaultdict(list)
    for file_id, stem in short.items():
        users[stem.lower()].append(file_id)
    stems = {}
    for file_id, path in files:
        clash = len(users[short[file_id].lower()]) > 1
        stems[file_id] = export_stem(path, file_id, len(file_id)) if clash else short[file_id]
    return stems

"""Transcript accuracy against references, shared by the tests and the benchmarks."""

import functools


def english_wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after OpenAI Whisper's English text normalizer on both sides.

    ``jiwer`` and ``whisper-normalizer`` are dev extras (``pip install -e '.[dev]'``), imported
    here rather than at module level so the pipeline itself never needs them.

    Args:
        references: Reference texts.
        hypotheses: Transcribed texts, in the same order.

    Returns:
        Word error rate over all pairs together (not a mean of per-pair rates).
    """
    import jiwer

    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])


def normalize(text: str) -> str:
    """OpenAI Whisper's English text normalizer (``whisper-normalizer``, a dev extra)."""
    return _english_normalizer()(text)


@functools.cache
def _english_normalizer():
    """One ``EnglishTextNormalizer`` per process: building it loads its spelling map."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def _word_key(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def word_start_differences(
    words: list[tuple[str, float]], reference: list[tuple[str, float]]
) -> list[float]:
    """Absolute start-time differences (seconds) of the words two timings share.

    The two word sequences are matched as sequences (``difflib.SequenceMatcher`` over the words
    lowercased and stripped of punctuation), so a word one transcript lacks or spells otherwise
    is skipped, not paired with its neighbour.

    Args:
        words: ``(word, start_s)`` in time order, e.g. from ``transcript_words``.
        reference: ``(word, start_s)`` from another method, e.g. faster-whisper's sequential
            ``transcribe(word_timestamps=True)``.

    Returns:
        ``|start - reference start|`` for every matched word, in order.
    """
    import difflib

    matcher = difflib.SequenceMatcher(
        a=[_word_key(w) for w, _ in words], b=[_word_key(w) for w, _ in reference], autojunk=False
    )
    differences = []
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            a, b = words[block.a + offset], reference[block.b + offset]
            differences.append(abs(a[1] - b[1]))
    return differences

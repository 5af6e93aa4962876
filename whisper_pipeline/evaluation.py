"""Transcript accuracy against references, shared by the tests and the benchmarks."""


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
    from whisper_normalizer.english import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])

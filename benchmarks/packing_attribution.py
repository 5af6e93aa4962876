"""Does window packing give any file a word of another file? Packed against unpacked, per file.

    python -m benchmarks.packing_attribution [--inputs corpus,many-short] [--orders 10]
                                             [--out benchmarks/out]

Every input set is transcribed twice by ``BatchTranscriber`` with the pipeline's defaults and
model: window packing on and off. For each file that shared a packed window, its packed
transcript's words are compared with the words of the files it shared a window with:

- *foreign*: a word of the packed transcript that neither this file's reference nor its unpacked
  transcript has, but a window neighbour's reference or unpacked transcript has: a word
  attributed to the wrong file (the goal is 0);
- *lost*: a word of both this file's reference and its unpacked transcript missing from its
  packed transcript (a word dropped at a boundary);
- WER of each run against the references.

Words are compared after Whisper's English normalizer (``evaluation.normalize``), as bags.

Vocabulary cannot tell clips that say the same words apart, so ``--orders N`` also transcribes
the chunks packed in ``N`` random orders (seeds 1..N), in waves of 64 chunks (which windows
chunks share depends on the order; a step's waves, counted in frames, take them longest
first), and counts *moved* words: a word a file gained against its unpacked transcript that a
window neighbour lost against its own (the goal is 0; a recognition variant that happens to
trade the same word counts too, so read the JSON).

Input sets as in ``benchmarks/run.py``. Prints a Markdown table; the per-file differences go to
``OUT/packing_attribution.json``.
"""

import argparse
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.common import (
    DEFAULT_OUT,
    ModelConfig,
    corpus_wer,
    load_input_set,
    load_pipeline_model,
    prepare_chunks,
)
from whisper_pipeline.core.batching import BatchTranscriber
from whisper_pipeline.core.packing import PackedWindow
from whisper_pipeline.core.types import DecodingOptions
from whisper_pipeline.resources.whisper import bundled_model_path


class RecordingTranscriber(BatchTranscriber):
    """``BatchTranscriber`` that records which files shared each packed window."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.neighbours: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def _decode_batch(self, batch):
        for window in batch:
            if isinstance(window, PackedWindow):
                names = {item.key[0] for item in window.items}
                with self._lock:  # batches are decoded on the model's worker threads
                    for name in names:
                        self.neighbours[name] |= names - {name}
        return super()._decode_batch(batch)


def file_texts(results, names) -> dict[str, str]:
    """Transcript per file name from chunk results keyed ``(name, chunk index)``."""
    pieces: dict[str, list] = defaultdict(list)
    for result in results:
        name, index = result.key
        pieces[name].append((index, " ".join(s.text for s in result.segments)))
    return {name: " ".join(t for _, t in sorted(pieces[name]) if t) for name in names}


def words(text: str) -> Counter:
    """Bag of normalized words."""
    from devtools.evaluation import normalize

    return Counter(normalize(text).split())


def compare(inputs, packed_texts, alone_texts, neighbours) -> tuple[list[dict], int, int]:
    """Per-file foreign and lost words; returns ``(rows, foreign total, lost total)``."""
    references = {item.name: item.reference or "" for item in inputs}
    rows, foreign_total, lost_total = [], 0, 0
    for name, others in sorted(neighbours.items()):
        own = words(references[name]) | words(alone_texts[name])
        elsewhere = Counter()
        for other in others:
            elsewhere |= words(references[other]) | words(alone_texts[other])
        packed = words(packed_texts[name])
        foreign = sorted(w for w in packed if w not in own and w in elsewhere)
        kept = words(references[name]) & words(alone_texts[name])
        lost = sorted((kept - packed).elements()) if references[name] else []
        foreign_total += len(foreign)
        lost_total += len(lost)
        if foreign or lost:
            rows.append(
                {
                    "file": name,
                    "foreign": foreign,
                    "lost": lost,
                    "packed": packed_texts[name],
                    "alone": alone_texts[name],
                    "neighbours": sorted(others),
                }
            )
    return rows, foreign_total, lost_total


WAVE_CHUNKS = 64
"""Chunks per wave in ``--orders`` runs: ``WAVE_BATCHES`` (8) batches of 8, so that packing sees
a random part of the chunks, not only ties in length (``pack_chunks`` sorts by length)."""


NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve".split()
    )
}


def plain_words(text: str) -> Counter:
    """Bag of lower-case words, punctuation dropped, "one".."twelve" as digits.

    Not Whisper's English normalizer: it turns "One, two, three." into "123" but "1, 2, 3"
    into "one 2 3", so a word moved between two such clips would not match.
    """
    found = re.findall(r"[a-z0-9']+", text.lower())
    return Counter(NUMBER_WORDS.get(word, word) for word in found)


def moved_words(packed_texts, alone_texts, neighbours) -> list[dict]:
    """Words a file gained (against unpacked) that a window neighbour lost; one row per file."""
    rows = []
    for name, others in sorted(neighbours.items()):
        gained = plain_words(packed_texts[name]) - plain_words(alone_texts[name])
        lost_nearby = Counter()
        for other in others:
            lost_nearby |= plain_words(alone_texts[other]) - plain_words(packed_texts[other])
        moved = sorted((gained & lost_nearby).elements())
        if moved:
            rows.append({"file": name, "moved": moved, "packed": packed_texts[name],
                         "alone": alone_texts[name], "neighbours": sorted(others)})  # fmt: skip
    return rows


def per_file(inputs, packed_texts, alone_texts) -> list[dict]:
    """Every scored file's WER packed and unpacked, and the reference words each run lost.

    *lost* is a reference word the unpacked transcript has and the packed one lacks; *gained* is
    the reverse (a reference word only packing found).
    """
    from devtools.evaluation import english_wer

    rows = []
    for item in inputs:
        if not item.scored:
            continue
        reference = words(item.reference)
        packed, alone = words(packed_texts[item.name]), words(alone_texts[item.name])
        rows.append(
            {
                "file": item.name,
                "wer_packed": english_wer([item.reference], [packed_texts[item.name]]),
                "wer_unpacked": english_wer([item.reference], [alone_texts[item.name]]),
                "lost": sorted(((alone & reference) - packed).elements()),
                "gained": sorted(((packed & reference) - alone).elements()),
                "packed": packed_texts[item.name],
                "unpacked": alone_texts[item.name],
            }
        )
    return rows


def order_search(
    model, chunks, names, alone_texts, orders: int, inputs=None
) -> tuple[list[dict], int, list[float]]:
    """Packed transcription of ``chunks`` in ``orders`` random orders.

    Returns:
        ``(moved rows, moved words in all, WER of each order)`` (WERs only with ``inputs``).
    """
    found, total, wers = [], 0, []
    for seed in range(1, orders + 1):
        shuffled = list(chunks)
        random.Random(seed).shuffle(shuffled)
        waves = [shuffled[i : i + WAVE_CHUNKS] for i in range(0, len(shuffled), WAVE_CHUNKS)]
        transcriber = RecordingTranscriber(model, DecodingOptions(pack_windows=True))
        results = [r for done in transcriber.transcribe_waves(iter(waves)) for r in done]
        texts = file_texts(results, names)
        rows = moved_words(texts, alone_texts, transcriber.neighbours)
        total += sum(len(row["moved"]) for row in rows)
        found += [dict(row, seed=seed) for row in rows]
        if inputs is not None:
            wers.append(corpus_wer(inputs, texts))
    return found, total, wers


def main() -> None:
    """Run both input sets packed and unpacked; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default="corpus,many-short")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--short-clips", type=int, default=120)
    parser.add_argument("--orders", type=int, default=0, help="random packing orders to search")
    args = parser.parse_args()
    config = ModelConfig(str(bundled_model_path()), False, "cpu", "int8", 0, 0, 5, 8)
    model = load_pipeline_model(config)
    table, summary, details = [], [], {}
    for input_set in args.inputs.split(","):
        inputs = load_input_set(input_set, None, args.short_clips, args.out)
        chunks, _ = prepare_chunks(inputs, model.feature_extractor)
        names = [item.name for item in inputs]
        runs = {}
        for pack in (True, False):
            transcriber = RecordingTranscriber(model, DecodingOptions(pack_windows=pack))
            started = time.perf_counter()
            results = transcriber.transcribe(chunks)
            runs[pack] = (
                file_texts(results, names),
                time.perf_counter() - started,
                transcriber,
            )
        (packed_texts, packed_s, packer), (alone_texts, alone_s, _) = runs[True], runs[False]
        rows, foreign, lost = compare(inputs, packed_texts, alone_texts, packer.neighbours)
        details[input_set] = rows
        moved, moved_total, order_wers = order_search(
            model, chunks, names, alone_texts, args.orders, inputs
        )
        details[f"{input_set} orders"] = moved
        files = per_file(inputs, packed_texts, alone_texts)
        details[f"{input_set} per file"] = files
        worse = [f for f in files if f["wer_packed"] > f["wer_unpacked"]]
        better = [f for f in files if f["wer_packed"] < f["wer_unpacked"]]
        summary.append(
            f"| {input_set} | {len(files)} | {len(worse)} | {len(better)} | "
            f"{sum(len(f['lost']) for f in files)} | {sum(len(f['gained']) for f in files)} | "
            + ", ".join(f"{100 * w:.1f}%" for w in order_wers)
            + " |"
        )
        table.append(
            f"| {input_set} | {len(inputs)} | {len(packer.neighbours)} | {foreign} | {lost} | "
            f"{moved_total} in {args.orders} | "
            f"{100 * corpus_wer(inputs, packed_texts):.1f}% | "
            f"{100 * corpus_wer(inputs, alone_texts):.1f}% | {packed_s:.1f} | {alone_s:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packing_attribution.json").write_text(json.dumps(details, indent=1))
    print(
        "| input set | files | files packed | foreign words | lost words | moved words, orders | "
        "WER packed | WER unpacked | packed s | unpacked s |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    )
    print("\n".join(table))
    print(
        "\n| input set | scored files | worse packed | better packed | reference words lost "
        "| reference words gained | WER packed, each order |\n|---|--:|--:|--:|--:|--:|---|"
    )
    print("\n".join(summary))


if __name__ == "__main__":
    main()

"""What word timestamps cost, and how well their times agree with faster-whisper's sequential ones.

    python -m benchmarks.word_timestamps [--repeats 2] [--limit N]

On the shared corpus, in one process and one model load: the pipeline's core transcription of
every chunk (``BatchTranscriber``, as ``transcribe_shard`` runs it) with ``word_timestamps`` off
and on, alternating, ``--repeats`` times each; the alignment's share of transcription time is
the median on/off ratio. Then every English file through faster-whisper's sequential
``WhisperModel.transcribe(beam_size=5, word_timestamps=True)``, and the start-time difference of
every word the two timings share (``evaluation.word_start_differences``). Prints a Markdown
table for ``benchmarks/RESULTS.md``.
"""

import argparse
import statistics
import time

import numpy as np

from benchmarks.run import ModelConfig, load_corpus, load_pipeline_model, prepare_chunks
from devtools.evaluation import word_start_differences
from whisper_pipeline.core.batching import BatchTranscriber
from whisper_pipeline.core.types import DecodingOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="first N corpus files only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    args = parser.parse_args()
    from whisper_pipeline.resources.whisper import bundled_model_path

    config = ModelConfig(
        model=bundled_model_path(), model_given=False, device=args.device,
        compute_type=args.compute_type, cpu_threads=0, num_workers=0, beam_size=5, batch_size=8,
    )  # fmt: skip
    inputs = load_corpus(args.limit)
    model = load_pipeline_model(config)
    chunks, _ = prepare_chunks(inputs, model.feature_extractor)
    walls: dict[bool, list[float]] = {False: [], True: []}
    align_s = []
    results = None
    for _ in range(args.repeats):
        for words in (False, True):
            transcriber = BatchTranscriber(model, DecodingOptions(word_timestamps=words))
            started = time.perf_counter()
            batch = transcriber.transcribe(chunks)
            walls[words].append(time.perf_counter() - started)
            if words:
                align_s.append(transcriber.align_s)
                results = batch
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    audio_s = sum(c.duration_s for c in chunks)
    differences = []
    english = [item for item in inputs if item.language.startswith("en")]
    for item in english:
        mine = sorted((r for r in results if r.key[0] == item.name), key=lambda r: r.key)
        words = [(w.word, w.start) for r in mine for s in r.segments for w in s.words]
        sequential, _ = model.transcribe(item.path, beam_size=5, word_timestamps=True)
        reference = [(w.word, w.start) for s in sequential for w in s.words]
        differences += word_start_differences(words, reference)
    diffs = np.array(differences)
    print(f"{len(chunks)} chunks, {audio_s:.0f} s of speech, {len(inputs)} files")
    print()
    print("| word_timestamps | transcription wall s (median) | alignment s | cost |")
    print("|---|--:|--:|--:|")
    print(f"| off | {off:.1f} | | |")
    print(
        f"| on | {on:.1f} | {statistics.median(align_s):.1f} | "
        f"{(on / off - 1) * 100:+.1f}% of transcription time |"
    )
    print()
    print(
        f"Word starts against sequential `word_timestamps=True`, {len(english)} English files, "
        f"{len(diffs)} matched words: median {np.median(diffs):.3f} s, "
        f"p90 {np.percentile(diffs, 90):.3f} s, within 0.2 s {np.mean(diffs < 0.2):.1%}."
    )


if __name__ == "__main__":
    main()

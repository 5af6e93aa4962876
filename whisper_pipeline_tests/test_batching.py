import threading
from collections import Counter

import numpy as np
import pytest

from devtools.evaluation import english_wer
from whisper_pipeline.core import audio
from whisper_pipeline.core.batching import BatchTranscriber, pad_features
from whisper_pipeline.core.chunking import log_mel, split_speech
from whisper_pipeline.core.types import ChunkInput, DecodingOptions

CLIPS = [
    "short/jfk.flac",
    "short/lj001_0001.wav",
    "short/lj001_0012.wav",
    "short/librivox_ss_0870.wav",
    "short/ls_1995_1837_0001.wav",
    "formats/sonnet1_excerpt.ogg",
    "long/sonnet_002.mp3",
]


def chunk_inputs(corpus, model, files) -> list[ChunkInput]:
    inputs = []
    for name in files:
        with open(corpus / name, "rb") as handle:
            waveform = audio.decode(handle)
        for chunk in split_speech(waveform, vad_scale=audio.peak_scale(waveform)):
            inputs.append(
                ChunkInput(
                    key=(name, chunk.index),
                    features=log_mel(model.feature_extractor, chunk.audio),
                    speech_starts=chunk.speech_starts,
                    speech_ends=chunk.speech_ends,
                )
            )
    return inputs


def texts(results) -> dict:
    by_file: dict = {}
    for result in sorted(results, key=lambda r: r.key):
        by_file.setdefault(result.key[0], []).extend(s.text for s in result.segments)
    return {name: " ".join(parts) for name, parts in by_file.items()}


@pytest.fixture(scope="module")
def inputs(corpus, model):
    return chunk_inputs(corpus, model, CLIPS)


@pytest.mark.slow  # the real model for several seconds
def test_cross_file_batches_give_the_same_text_as_one_chunk_at_a_time(model, inputs):
    batched = BatchTranscriber(model, DecodingOptions(batch_size=8))
    single = BatchTranscriber(model, DecodingOptions(batch_size=1))
    batched_text = texts(batched.transcribe(inputs))
    assert batched_text == texts(single.transcribe(inputs))
    # And the batches really mixed files: fewer generate calls than chunks.
    assert batched.generate_calls < single.generate_calls


@pytest.mark.slow  # the real model for several seconds
def test_waves_join_as_the_queue_thins_out_and_give_every_chunk_once(model, inputs):
    ordered = sorted(inputs, key=lambda c: -c.features.shape[-1])  # as chunk_waves reads them
    waves = [ordered[start : start + 3] for start in range(0, len(ordered), 3)]
    yielded: list = []

    def read_waves():
        for number, wave in enumerate(waves):
            if number >= 2:  # a wave joins only once the one two before is all done
                assert {c.key for c in waves[number - 2]} <= {r.key for r in yielded}
            yield wave

    transcriber = BatchTranscriber(model, DecodingOptions(batch_size=2))
    for done in transcriber.transcribe_waves(read_waves(), refill=2):
        assert done
        yielded += done
    assert sorted(r.key for r in yielded) == sorted(c.key for c in inputs)
    assert texts(yielded) == texts(BatchTranscriber(model, DecodingOptions()).transcribe(inputs))


@pytest.mark.slow  # the real model for several seconds
def test_batched_text_matches_references(corpus, model, inputs):
    from whisper_pipeline_tests.conftest import corpus_rows

    references = {row["file"]: row["reference"] for row in corpus_rows()}
    hypotheses = texts(BatchTranscriber(model, DecodingOptions()).transcribe(inputs))
    # tiny.en int8 on CPU: measured 5.5% on these clips (sequential WhisperModel.transcribe with
    # beam 5: 4.3%); 8% leaves room for CPU instruction-set differences without hiding a regression.
    assert english_wer([references[f] for f in CLIPS], [hypotheses[f] for f in CLIPS]) < 0.08


@pytest.mark.slow  # the real model for several seconds
def test_segments_are_ordered_and_inside_the_file(corpus, model, inputs):
    results = BatchTranscriber(model, DecodingOptions()).transcribe(inputs)
    with open(corpus / "long/sonnet_002.mp3", "rb") as handle:
        duration = audio.decode(handle).shape[0] / audio.SAMPLE_RATE
    sonnet = [
        s
        for r in sorted(results, key=lambda r: r.key)
        if r.key[0] == "long/sonnet_002.mp3"
        for s in r.segments
    ]
    assert len(sonnet) >= 4
    starts = [s.start for s in sonnet]
    assert starts == sorted(starts)
    assert all(0 <= s.start <= s.end <= duration + 0.05 for s in sonnet)


class PoisonedTranscriber(BatchTranscriber):
    """Raises inside the model whenever a batch holds the poisoned chunk."""

    poisoned = ("poison", 0)

    def _first_pass(self, batch):
        if any(window.chunk.key == self.poisoned for window in batch):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super()._first_pass(batch)


@pytest.mark.slow  # the real model for several seconds
def test_a_chunk_that_raises_in_the_model_fails_alone(model, inputs):
    poison = ChunkInput(PoisonedTranscriber.poisoned, inputs[0].features, (0,), (16000,))
    transcriber = PoisonedTranscriber(model, DecodingOptions(batch_size=8))
    results = {r.key: r for r in transcriber.transcribe([*inputs, poison])}
    assert "illegal memory access" in results[PoisonedTranscriber.poisoned].error
    assert not results[PoisonedTranscriber.poisoned].segments
    others = [r for key, r in results.items() if key != PoisonedTranscriber.poisoned]
    assert all(not r.error and r.segments for r in others)


def test_pad_features_zero_pads_to_3000_frames():
    batch = pad_features([np.ones((80, 10), np.float32), np.ones((80, 3000), np.float32)])
    assert batch.shape == (2, 80, 3000) and batch.dtype == np.float32
    assert batch[0, :, 10:].sum() == 0 and batch[0, :, :10].sum() == 800


class CountingTranscriber(BatchTranscriber):
    """Records ``(temperature, rows)`` of every ``generate`` call."""

    def __init__(self, model, options):
        super().__init__(model, options)
        self.calls: list[tuple[float, int]] = []

    def _generate(self, encoder_output, languages, temperature, frames, model=None):
        self.calls.append((temperature, len(languages)))
        return super()._generate(encoder_output, languages, temperature, frames, model)


@pytest.mark.slow  # the real model for several seconds
def test_fallback_rows_from_every_batch_share_generate_calls(model, inputs):
    inputs = inputs[:5]
    # An average log-probability threshold of 0 fails every speech row at every temperature.
    # Windows of one chunk each: a packed window that fails the checks is unpacked instead.
    options = DecodingOptions(
        batch_size=2, fallback_batch_size=len(inputs), log_prob_threshold=0, pack_windows=False
    )
    transcriber = CountingTranscriber(model, options)
    results = transcriber.transcribe(inputs)
    first_round = transcriber.calls[: (len(inputs) + 1) // 2 + 5]
    assert [rows for temperature, rows in first_round if temperature == 0] == [2] * (
        len(inputs) // 2
    ) + [1] * (len(inputs) % 2)
    fallback = [(temperature, rows) for temperature, rows in first_round if temperature > 0]
    # One call per fallback temperature, each holding rows from several first-pass batches.
    assert [temperature for temperature, _ in fallback] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(rows > 2 for _, rows in fallback)
    # When every temperature fails, the most likely candidate is kept: no chunk loses its text.
    assert all(not r.error and " ".join(s.text for s in r.segments).strip() for r in results)


class ReencodingTranscriber(CountingTranscriber):
    """Takes the CUDA path on CPU: fallback rows are encoded again instead of kept."""

    def _host_copy(self, encoder_output):
        return None


@pytest.mark.slow  # the real model for several seconds
def test_fallback_that_encodes_again_matches_fallback_from_kept_encoder_output(model, inputs):
    import ctranslate2

    inputs = inputs[:4]
    options = DecodingOptions(
        batch_size=2, fallback_batch_size=4, log_prob_threshold=-0.3, pack_windows=False
    )
    runs = []
    for transcriber in (CountingTranscriber(model, options), ReencodingTranscriber(model, options)):
        ctranslate2.set_random_seed(7)
        runs.append((transcriber.transcribe(inputs), transcriber.calls))
    (kept, kept_calls), (again, again_calls) = runs
    assert any(temperature > 0 for temperature, _ in kept_calls), "no row fell back"
    assert again_calls == kept_calls
    for field in ("text", "temperature"):
        assert [[getattr(s, field) for s in r.segments] for r in again] == [
            [getattr(s, field) for s in r.segments] for r in kept
        ]


FALLBACK_CLIPS = ["short/pv_fr.wav", "short/pv_it.wav", "formats/mls_es_13697_11991_000000.opus"]
"""Clips tiny.en (English-only) decodes badly enough at temperature 0 to sample."""


@pytest.mark.slow  # the real model sampling, twice
def test_temperature_fallback_gives_the_same_text_whatever_the_batches_and_their_timing(
    corpus, model, inputs
):
    from whisper_pipeline.resources.whisper import WhisperModelResource

    chunks = chunk_inputs(corpus, model, FALLBACK_CLIPS[:2]) + inputs[:2]
    # Two CTranslate2 workers decode concurrently, so batches finish in any order.
    whisper = WhisperModelResource(cpu_threads=1, num_workers=2, batch_size=2)
    first = whisper.transcriber()
    runs = [first.transcribe(chunks)]
    # Again with the same loaded model: other batches (the chunks reversed, in three waves).
    again = whisper.transcriber()
    waves = [chunks[::-1][i::3] for i in range(3)]
    by_key = {r.key: r for finished in again.transcribe_waves(waves) for r in finished}
    runs.append([by_key[chunk.key] for chunk in chunks])
    sampled = [s for r in runs[0] for s in r.segments if s.temperature > 0]
    assert len(sampled) >= 2, "no row fell back to sampling"
    assert first.sampler is not None and first.fallback_size() == 1  # a fresh model per row

    def rows(results):
        return [
            (r.key, [(s.text, s.temperature, [w.word for w in s.words]) for s in r.segments])
            for r in results
        ]

    assert rows(runs[1]) == rows(runs[0])


def test_token_budget_grows_with_the_window_and_stops_at_the_model_limit(model):
    transcriber = BatchTranscriber(model, DecodingOptions(max_tokens_per_second=12.0))
    # 4 prompt tokens + 16 + 12 tokens/s: 5 s (500 frames) -> 80, 30 s -> 380.
    assert transcriber.max_length(4, 500) == 80
    assert transcriber.max_length(4, 3000) == 380
    fast = BatchTranscriber(model, DecodingOptions(max_tokens_per_second=30.0))
    assert fast.max_length(4, 3000) == model.max_length == 448
    assert (
        BatchTranscriber(model, DecodingOptions(max_tokens_per_second=None)).max_length(4, 500)
        == 448
    )


@pytest.mark.slow  # the real model for several seconds
def test_a_window_that_reaches_the_token_budget_is_continued_not_cut(model, inputs):
    long_chunks = [chunk for chunk in inputs if chunk.duration_s > 8][:3]
    # Windows of one chunk each (the budget of a packed window is its whole length's).
    free = CountingTranscriber(
        model, DecodingOptions(max_tokens_per_second=None, pack_windows=False)
    )
    # 16 + 2 tokens/s is far below what these readings need (about 5 tokens/s).
    tight = CountingTranscriber(
        model, DecodingOptions(max_tokens_per_second=2.0, pack_windows=False)
    )
    free_text = texts(free.transcribe(long_chunks))
    tight_text = texts(tight.transcribe(long_chunks))
    rows = [sum(rows for _, rows in transcriber.calls) for transcriber in (free, tight)]
    assert rows[1] > rows[0], "the budget never cut a window"
    references = list(free_text.values())
    assert english_wer(references, [tight_text[name] for name in free_text]) < 0.1


@pytest.mark.slow  # the real model for several seconds
def test_two_workers_decode_batches_concurrently_with_the_same_text(model, inputs):
    from faster_whisper import WhisperModel

    from whisper_pipeline.resources.whisper import bundled_model_path

    two = WhisperModel(
        bundled_model_path(), device="cpu", compute_type="int8", cpu_threads=1, num_workers=2
    )
    # Temperature 0 only: sampling would differ between any two runs.
    options = DecodingOptions(batch_size=2, temperatures=(0.0,))
    concurrent = BatchTranscriber(two, options)
    assert concurrent.workers == 2
    in_flight, peak = 0, 0
    lock = threading.Lock()
    inner = two.model
    generate = inner.generate

    def counting_generate(*args, **kwargs):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return generate(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    class Model:  # CTranslate2's model is a C++ object: wrap it to count calls in flight.
        def __getattr__(self, name):
            return counting_generate if name == "generate" else getattr(inner, name)

    two.model = Model()
    single = BatchTranscriber(model, options)
    assert texts(concurrent.transcribe(inputs)) == texts(single.transcribe(inputs))
    assert peak == 2, "batches never overlapped"
    # Batches are split between free workers, but still hold several chunks each.
    assert concurrent.generate_calls < len(inputs)


@pytest.mark.slow  # the real model, batched and sequential, on seven clips
def test_word_timestamps_agree_with_faster_whispers_sequential_words(corpus, model, inputs):
    from devtools.evaluation import word_start_differences

    transcriber = BatchTranscriber(model, DecodingOptions(word_timestamps=True))
    results = transcriber.transcribe(inputs)
    assert transcriber.aligner.calls > 0 and transcriber.aligner.failures == 0
    differences = []
    for name in CLIPS:
        chunks = sorted((r for r in results if r.key[0] == name), key=lambda r: r.key)
        segments = [s for chunk in chunks for s in chunk.segments]
        words = [w for s in segments for w in s.words]
        assert words, name
        with open(corpus / name, "rb") as handle:
            duration = audio.decode(handle).shape[0] / audio.SAMPLE_RATE
        starts = [w.start for w in words]
        # Monotonic within the file, inside the file, inside their segment.
        assert starts == sorted(starts), name
        assert all(0 <= w.start <= w.end <= duration + 0.01 for w in words), name
        for segment in segments:
            for w in segment.words:
                assert segment.start <= w.start <= w.end <= segment.end, (name, w)
        # Every character of the text is in a timed word, in order (Whisper's word split may
        # differ from spaces: "all-eating" is "all" + "-eating").
        for segment in segments:
            assert "".join(w.word for w in segment.words) == "".join(segment.text.split())
        sequential, _ = model.transcribe(str(corpus / name), beam_size=5, word_timestamps=True)
        reference = [(w.word, w.start) for s in sequential for w in s.words]
        differences += word_start_differences([(w.word, w.start) for w in words], reference)
    assert len(differences) > 150
    assert float(np.median(differences)) < 0.2


def test_detected_languages_are_read_per_row_from_the_encoder_output():
    # The detection path of multilingual models, with a stand-in for CTranslate2's
    # detect_language (no multilingual model installs from the package registries here).
    from types import SimpleNamespace

    detected = [[("<|fr|>", 0.91), ("<|en|>", 0.05)], [("<|de|>", 0.66), ("<|nl|>", 0.3)]]
    transcriber = BatchTranscriber.__new__(BatchTranscriber)
    transcriber.fixed_language = None
    transcriber.model = SimpleNamespace(
        model=SimpleNamespace(detect_language=lambda encoder_output: detected)
    )
    assert transcriber._languages(object(), 2) == [("fr", 0.91), ("de", 0.66)]
    transcriber.fixed_language = "es"  # a configured language skips detection
    assert transcriber._languages(object(), 2) == [("es", 1.0), ("es", 1.0)]


@pytest.mark.slow  # the real model on a French clip
def test_english_only_models_report_en_whatever_is_spoken(corpus, model):
    inputs = chunk_inputs(corpus, model, ["short/pv_fr.wav"])
    results = BatchTranscriber(model, DecodingOptions()).transcribe(inputs)
    assert {(r.language, r.language_probability) for r in results} == {("en", 1.0)}


def test_pack_chunks_fills_windows_first_fit_and_leaves_long_chunks_alone():
    from whisper_pipeline.core.chunking import N_FRAMES
    from whisper_pipeline.core.packing import PACK_GAP_FRAMES, pack_chunks

    def chunk(name, frames):
        features = np.full((80, frames), -0.5, np.float32)
        return ChunkInput((name, 0), features, (0,), (frames * 160,))

    chunks = [chunk(f"c{i}", frames) for i, frames in enumerate([900, 1000, 400, 2500, 700, 300])]
    packed, alone = pack_chunks(chunks)
    assert [c.key[0] for c in alone] == ["c3"]  # 25 s: longer than a packed chunk may be
    assert sorted(c.key[0] for p in packed for c in p.items) == ["c0", "c1", "c2", "c4", "c5"]
    for window in packed:
        assert window.frames <= N_FRAMES
        lengths = [c.features.shape[-1] for c in window.items]
        assert list(window.starts) == [
            sum(lengths[:i]) + i * PACK_GAP_FRAMES for i in range(len(lengths))
        ]
        features = window.features()
        for item, start in zip(window.items, window.starts, strict=True):
            assert np.array_equal(
                features[:, start : start + item.features.shape[-1]], item.features
            )
    # A chunk no other fits beside is decoded alone, not as a window of one.
    packed, alone = pack_chunks([chunk("a", 1000), chunk("b", 2500)])
    assert (
        packed == []
        and [c.key[0] for c in alone] == ["b", "a"]
        or sorted(c.key[0] for c in alone) == ["a", "b"]
    )


@pytest.mark.slow  # the real model on 12 clips, packed and alone
def test_packed_windows_attribute_every_word_to_its_own_file(corpus, model, tmp_path):
    import re

    import soundfile

    from whisper_pipeline.core.packing import pack_chunks
    from whisper_pipeline_tests.conftest import corpus_rows
    from whisper_pipeline_tests.fixtures import SENTENCES, speech

    references = {
        row["file"]: row["reference"]
        for row in corpus_rows()
        if row["file"].startswith("short/") and row["language"] == "en" and row["reference"]
    }
    references = dict(sorted(references.items())[:9])
    for index, sentence in enumerate(SENTENCES):  # synthesized: texts no corpus clip shares
        path = tmp_path / f"synth_{index}.wav"
        soundfile.write(path, *speech(index))
        references[str(path)] = sentence
    inputs = chunk_inputs(corpus, model, list(references))
    packed_windows, _ = pack_chunks(inputs)
    assert sum(len(w.items) for w in packed_windows) >= 10  # most clips share a window

    def words_of(text):
        return re.findall(r"[a-z0-9']+", text.lower())

    def by_file(results):
        grouped = {}
        for result in sorted(results, key=lambda r: r.key):
            grouped.setdefault(result.key[0], []).extend(result.segments)
        return grouped

    packed = by_file(BatchTranscriber(model, DecodingOptions(pack_windows=True)).transcribe(inputs))
    alone = by_file(BatchTranscriber(model, DecodingOptions(pack_windows=False)).transcribe(inputs))
    vocabulary = {name: set(words_of(text)) for name, text in references.items()}
    for name in references:
        with open(corpus / name, "rb") as handle:
            duration = audio.decode(handle).shape[0] / audio.SAMPLE_RATE
        segments = packed[name]
        assert segments, name
        for segment in segments:
            assert 0 <= segment.start <= segment.end <= duration + 0.01, (name, segment)
            for word in segment.words:
                assert segment.start - 0.01 <= word.start <= word.end <= duration + 0.01
        hypothesis = words_of(" ".join(s.text for s in segments))
        alone_words = set(words_of(" ".join(s.text for s in alone[name])))
        others = set().union(*(v for other, v in vocabulary.items() if other != name))
        # A word of another file's text, which neither this file's text nor its transcript
        # when decoded alone has, came from a neighbour in the window.
        foreign = [w for w in hypothesis if w in others - vocabulary[name] - alone_words]
        assert foreign == [], (name, foreign)
        # Nothing lost or repeated at a boundary: as much text as decoded alone, give or take a
        # recognition difference (characters, since "1 0 0 1" and "1001" are the same digits).
        packed_chars = len("".join(hypothesis))
        alone_chars = len("".join(words_of(" ".join(s.text for s in alone[name]))))
        assert abs(packed_chars - alone_chars) <= max(4, 0.15 * alone_chars), name
    names = list(references)
    wer_packed = english_wer(
        [references[n] for n in names], [" ".join(s.text for s in packed[n]) for n in names]
    )
    wer_alone = english_wer(
        [references[n] for n in names], [" ".join(s.text for s in alone[n]) for n in names]
    )
    assert wer_packed <= wer_alone + 0.005


@pytest.mark.slow  # the real model on four clips
def test_a_packed_chunk_whisper_skipped_does_not_take_its_neighbours_word(corpus, model):
    # Packed, Whisper skipped "one, two, three" and the alignment put the next clip's first
    # word ("then") in its span: the doubtful words make the window's chunks be decoded alone.
    names = ["short/lj001_0002.wav", "formats/one_two_three_44k_s24.flac",
             "short/lj001_0013.wav", "short/lj001_0008.wav"]  # fmt: skip
    results = BatchTranscriber(model, DecodingOptions(pack_windows=True)).transcribe(
        chunk_inputs(corpus, model, names)
    )
    text = texts(results)
    assert "two" in text["formats/one_two_three_44k_s24.flac"].lower()
    assert text["short/lj001_0013.wav"].lower().startswith("then")


@pytest.mark.slow  # the real model on six clips, packed and alone
def test_packed_clips_that_say_the_same_words_keep_their_own(corpus, model):
    # Six encodings of one "one, two, three" recording share windows: no vocabulary tells
    # their words apart, only time. Found through the CLI: "1, 2," and "3, 1, 2, 3", the last
    # word of one clip aligned across a 0.5 s gap into the next.
    from devtools.evaluation import normalize
    from whisper_pipeline_tests.conftest import corpus_rows

    names = sorted(
        row["file"] for row in corpus_rows() if row["file"].startswith("formats/one_two_three")
    )
    inputs = chunk_inputs(corpus, model, names)
    for order in (inputs, inputs[::-1], inputs[1:] + inputs[:1]):
        transcriber = BatchTranscriber(model, DecodingOptions(pack_windows=True))
        text = texts(transcriber.transcribe(order))
        spoken = {name: normalize(text[name]).replace(" ", "") for name in names}
        assert set(spoken.values()) == {"123"}, text


def test_doubtful_chunks_flag_words_that_may_belong_to_a_neighbour():
    from whisper_pipeline.core.packing import assign_words, doubtful_chunks

    spans = [(0.0, 2.0), (2.5, 4.5), (5.0, 7.0), (7.5, 9.5), (10.0, 12.0)]

    def word(text, start, end, probability=0.9):
        return {"word": text, "start": start, "end": end, "probability": probability}

    def doubtful(words):
        piece = {"start": 0.0, "end": 12.0, "tokens": []}
        return doubtful_chunks(spans, assign_words([piece], [words], spans))

    clean = [word("a", 0.2, 1.8), word("b", 2.7, 4.3), word("c", 5.2, 6.8), word("d", 7.6, 9.4)]
    assert doubtful(clean) == set()
    # Unlikely words, or words covering under half the chunk: it and both neighbours.
    assert doubtful([word("a", 0.2, 1.8), word("b", 2.7, 4.3, 0.2)]) == {0, 1, 2}
    assert doubtful([word("a", 0.2, 1.8), word("b", 2.7, 3.0)]) == {0, 1, 2}
    # A word aligned across the gap before its chunk: it and the one before.
    assert doubtful([word("a", 0.2, 1.8), word("b", 2.2, 4.3), word("c", 5.2, 6.8)]) == {0, 1}
    # A word reaching into the next chunk's gap by more than half a second: it and the next.
    assert doubtful([word("c", 5.2, 7.6), word("d", 7.9, 9.4)]) == {2, 3}
    # Two words in a row aligned to no time: squeezed in where nobody said them.
    squeezed = [word("d", 7.6, 8.0), word("e", 8.0, 8.0), word("f", 8.0, 8.0), word("g", 8, 9.4)]
    assert doubtful(squeezed) == {2, 3, 4}
    assert doubtful([word("d", 7.6, 8.0), word("e", 8.0, 8.0), word("g", 8.1, 9.4)]) == set()


def test_chunks_sharing_a_segment_are_packed_again():
    from whisper_pipeline.core.packing import assign_words, doubtful_chunks, split_segments

    # Three encodings of one "one, two, three" clip and a fourth clip, as packed through the
    # CLI on the corpus (window times in seconds, words as the alignment timed them). Whisper
    # wrote one segment across all three; the alignment moved the middle clip's "3" into the
    # last clip, where it came out "3, 1, 2, 3". No word is unlikely, early, late or squeezed,
    # so only the shared segment tells.
    spans = [(18.27, 21.01), (21.51, 24.25), (24.75, 27.49), (27.99, 29.77)]
    timed = [
        ("1,", 18.78, 19.46, 0.55), ("2,", 19.46, 20.14, 0.98), ("3,", 20.52, 21.42, 1.0),
        ("1,", 21.68, 22.36, 0.98), ("2,", 23.64, 23.84, 0.98), ("3,", 24.84, 25.06, 0.95),
        ("1,", 25.06, 25.06, 0.55), ("2,", 25.76, 26.42, 0.92), ("3", 26.66, 27.46, 0.99),
    ]  # fmt: skip
    words = [{"word": w, "start": s, "end": e, "probability": p} for w, s, e, p in timed]
    shared_piece = {"start": 18.0, "end": 28.0, "tokens": []}
    own_piece = {"start": 28.0, "end": 29.8, "tokens": []}
    own_words = [{"word": "Then", "start": 28.2, "end": 29.5, "probability": 0.9}]
    assigned = assign_words([shared_piece, own_piece], [words, own_words], spans)
    assert ["".join(w["word"] for _, g in pairs for w in g) for pairs in assigned] == [
        "1,2,3,", "1,2,", "3,1,2,3", "Then"
    ]  # fmt: skip
    assert doubtful_chunks(spans, assigned) == set()
    # Its timestamps also reach the fourth clip, which may have lost a word to it.
    assert split_segments(spans, assigned) == {0, 1, 2, 3}
    # One segment per chunk: nothing to pack again.
    pieces = [{"start": s, "end": e, "tokens": []} for s, e in spans]
    per_chunk = [[words[0]], [words[3]], [words[7]], own_words]
    assert split_segments(spans, assign_words(pieces, per_chunk, spans)) == set()
    # Without word timings a segment goes whole to one chunk: never shared.
    assert split_segments(spans, assign_words([shared_piece], None, spans)) == set()
    # One segment per word, on a one-second grid, and the alignment moving a "3." timed at
    # 12-13 s to 13.8 s, into the next clip (the same clips in another order).
    spans = [(10.41, 13.15), (13.65, 16.39)]
    pieces = [
        {"start": 12.0, "end": 13.0, "tokens": []},
        {"start": 13.0, "end": 14.0, "tokens": []},
    ]
    moved = [[{"word": "3.", "start": 13.78, "end": 14.28, "probability": 0.93}],
             [{"word": "1.", "start": 14.28, "end": 14.28, "probability": 0.01}]]  # fmt: skip
    assigned = assign_words(pieces, moved, spans)
    assert [len(pairs) for pairs in assigned] == [0, 2]
    assert split_segments(spans, assigned) == {0, 1}
    # A "3." said again at probability 0.0, timed 12-13 s and aligned to the next clip's
    # first 0.04 s: the next clip's eight likely words keep its mean probability high.
    spans = [(9.86, 12.6), (13.1, 15.68)]
    pieces = [{"start": s, "end": s + 1.0, "tokens": []} for s in (11.0, 12.0, 13.0)]
    said = "Then in the same operations with ugly ones.".split()
    then = [
        {"word": w, "start": 13.14 + 0.3 * i, "end": 13.4 + 0.3 * i, "probability": 0.95}
        for i, w in enumerate(said)
    ]
    timed = [[{"word": "3.", "start": 11.92, "end": 12.29, "probability": 0.93}],
             [{"word": "3.", "start": 13.08, "end": 13.14, "probability": 0.0}], then]  # fmt: skip
    assigned = assign_words(pieces, timed, spans)
    assert [len(pairs) for pairs in assigned] == [1, 2]
    assert split_segments(spans, assigned) == set()
    assert doubtful_chunks(spans, assigned) == {0, 1}


@pytest.mark.slow  # the real model on 20 clips
def test_packing_stops_when_most_packed_chunks_come_back_out(corpus, model):
    # Clips packing does badly on (from the corpus's packed windows): six encodings of one
    # "one, two, three", clips in languages tiny.en does not know, digits read twice. Most of
    # their chunks come back out of packed windows, so packing stops; every chunk still gets
    # its text.
    from devtools.evaluation import normalize
    from whisper_pipeline_tests.conftest import corpus_rows

    rows = corpus_rows()
    names = sorted(r["file"] for r in rows if r["file"].startswith("formats/one_two_three"))
    names += [f"short/pv_{language}.wav" for language in ("de", "es", "fr", "it", "pt")]
    names += ["short/digits_10001_90210_01803.wav", "formats/digits_narrowband_16k.wav"]
    names += ["short/pv_ja.wav", "short/pv_ko.wav", "formats/fr_dictee.aiff"]
    names += ["short/stereo_two_talkers.wav", "short/ami_es2011a_40s_46s.wav"]
    inputs = chunk_inputs(corpus, model, names)
    transcriber = BatchTranscriber(model, DecodingOptions(batch_size=1, pack_windows=True))
    packed = texts(transcriber.transcribe(inputs))
    assert transcriber.packing_stopped, transcriber.unpacked
    came_out = sum(transcriber.unpacked.values()) - transcriber.unpacked["packing stopped"]
    assert came_out > 8, transcriber.unpacked  # more than half of 16 packed chunks or more
    assert packed.keys() == set(names)
    for name in names:
        if "one_two_three" in name:
            assert normalize(packed[name]).replace(" ", "") == "123", packed
    english = [n for n in names if "pv_" not in n and "one_two_three" not in n]
    for name in english:
        assert packed[name].strip(), name


def test_stopping_packing_splits_waiting_windows_and_later_waves():
    from types import SimpleNamespace

    from whisper_pipeline.core.packing import PackedWindow
    from whisper_pipeline.core.scheduler import PACK_STOP_MIN_CHUNKS
    from whisper_pipeline.core.scheduler import Scheduler as _Queue

    def chunk(key, seconds):
        return ChunkInput(key, np.zeros((80, int(seconds * 100)), np.float32), (0,), (1,))

    transcriber = SimpleNamespace(
        options=DecodingOptions(pack_windows=True), fixed_language="en", unpacked=Counter()
    )
    waves = iter([[chunk(i, 3.0) for i in range(12)], [chunk(i, 3.0) for i in range(12, 16)]])
    queue = _Queue(transcriber, refill=2)
    queue.take_waves(waves)
    assert all(isinstance(w, PackedWindow) for w in queue.windows)  # 7 and 5 to a window
    # Exactly half came back out: packing goes on.
    queue.packed_chunks, queue.packed_out = PACK_STOP_MIN_CHUNKS, PACK_STOP_MIN_CHUNKS // 2
    queue.judge_packing()
    assert queue.packing and len(queue.windows) == 2
    # More than half: the waiting packed windows become one window per chunk.
    queue.packed_out += 1
    queue.judge_packing()
    assert not queue.packing and transcriber.packing_stopped
    assert sorted(w.chunk.key for w in queue.windows) == list(range(12))
    assert transcriber.unpacked["packing stopped"] == 12
    # And a later wave is not packed.
    queue.refill = 100
    queue.take_waves(waves)
    assert len(queue.windows) == 16 and not any(isinstance(w, PackedWindow) for w in queue.windows)

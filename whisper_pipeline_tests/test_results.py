from datetime import UTC, datetime

from whisper_pipeline.core.results import (
    ContentResult,
    ModelSpec,
    assemble,
    build_tables,
    options_key,
)
from whisper_pipeline.core.types import ChunkResult, DecodingOptions, Segment

NOW = "2026-11-21T02:00:00+00:00"


def segment(text: str, start: float) -> Segment:
    return Segment(start, start + 1, text, -0.2, 0.01, 1.1, 0.0)


def file_info(sha: str, status: str = "ok", error: str = "") -> dict:
    return {"content_sha256": sha, "duration_s": 3.0, "speech_duration_s": 2.0, "status": status,
            "error": error}  # fmt: skip


def test_a_chunk_that_failed_in_the_model_fails_its_file_only():
    chunks = [
        ChunkResult(("a", 0), [segment("hello", 0.0)], "en", 1.0),
        ChunkResult(("a", 1), [], "en", 1.0, error="RuntimeError: CUDA error"),
        ChunkResult(("b", 0), [segment("world", 0.5)], "en", 1.0),
    ]
    a, b = assemble([file_info("a"), file_info("b")], chunks, {}, NOW)
    assert (a.status, a.error, a.segments) == (
        "failed",
        "model failed on chunk 1: RuntimeError: CUDA error",
        [],
    )
    assert b.status == "ok" and [s["text"] for s in b.segments] == ["world"]


def test_chunks_without_text_mean_no_speech_and_decode_failures_stay_failed():
    silent, broken = assemble(
        [file_info("s"), file_info("x", "failed", "decoding yielded no samples")],
        [ChunkResult(("s", 0), [], "en", 1.0)],
        {},
        NOW,
    )
    assert (silent.status, silent.segments) == ("no_speech", [])
    assert (broken.status, broken.error) == ("failed", "decoding yielded no samples")


def test_build_tables_gives_failed_files_no_transcript_and_shares_duplicate_content():
    manifest = [
        {"file_id": f, "source_uri": f"file:///{f}", "relative_path": f, "size_bytes": 1,
         "content_sha256": sha, "duration_s": 3.0, "sample_rate_hz": 16000, "channels": 1,
         "codec": "pcm_s16le", "status": "ok", "error": "", "processed_at": None}
        for f, sha in (("one.wav", "a"), ("copy.wav", "a"), ("bad.wav", "x"), ("lost.wav", "z"))
    ]  # fmt: skip
    results = {
        "a": ContentResult(
            "a",
            "ok",
            segments=[
                {
                    "start_s": 0.0,
                    "end_s": 1.0,
                    "text": "hi",
                    "avg_logprob": -0.1,
                    "no_speech_prob": 0.0,
                    "compression_ratio": 1.0,
                    "temperature": 0.0,
                    "language": "en",
                    "language_probability": 1.0,
                    "words": [
                        {"word": "hi", "start_s": 0.1, "end_s": 0.6, "probability": 0.9},
                        {"word": "there.", "start_s": 0.6, "end_s": 1.0, "probability": 0.8},
                    ],
                }
            ],
            transcribed_at=NOW,
        ),  # fmt: skip
        "x": ContentResult("x", "failed", error="model failed", transcribed_at=NOW),
    }
    spec = ModelSpec("tiny.en", "cpu", "int8", DecodingOptions(beam_size=5))
    files, transcripts, segments, words = build_tables(manifest, results, spec, datetime.now(UTC))
    status = {r["file_id"]: (r["status"], r["error"]) for r in files.to_pylist()}
    assert status == {
        "one.wav": ("ok", ""),
        "copy.wav": ("ok", ""),
        "bad.wav": ("failed", "model failed"),
        "lost.wav": ("failed", "no transcription result was produced"),
    }
    assert sorted(transcripts.column("file_id").to_pylist()) == ["copy.wav", "one.wav"]
    assert segments.num_rows == 2
    assert segments.column("language").to_pylist() == ["en", "en"]
    # Duplicate contents share one result: each file gets its own word rows, numbered from 0.
    rows = sorted(words.to_pylist(), key=lambda r: (r["file_id"], r["word_index"]))
    assert [(r["file_id"], r["word_index"], r["segment_index"], r["word"]) for r in rows] == [
        ("copy.wav", 0, 0, "hi"),
        ("copy.wav", 1, 0, "there."),
        ("one.wav", 0, 0, "hi"),
        ("one.wav", 1, 0, "there."),
    ]


def test_file_language_is_the_speech_weighted_majority_of_its_chunks():
    from whisper_pipeline.core.results import majority_language

    chunks = [
        ChunkResult(("a", 0), [segment("bonjour", 0.0)], "fr", 0.6),
        ChunkResult(("a", 1), [segment("hello", 30.0)], "en", 0.9),
        ChunkResult(("a", 2), [segment("world", 60.0)], "en", 0.7),
        ChunkResult(("a", 3), [], "", 0.0),
    ]
    frames = {("a", 0): 1500, ("a", 1): 1000, ("a", 2): 1000}
    # The first 30 s say French (what faster-whisper would report); most speech is English.
    assert majority_language(chunks, frames) == ("en", 0.8)
    assert majority_language(chunks, {("a", 0): 3000, ("a", 1): 500}) == ("fr", 0.6)
    assert majority_language([], {}) == ("", 0.0)
    (result,) = assemble([file_info("a")], chunks, frames, NOW)
    assert (result.language, result.language_probability) == ("en", 0.8)
    assert [s["language"] for s in result.segments] == ["fr", "en", "en"]


def test_word_timestamps_are_part_of_the_cache_key():
    on = options_key("tiny.en", "int8", DecodingOptions())
    assert on != options_key("tiny.en", "int8", DecodingOptions(word_timestamps=False))


def test_options_key_changes_with_anything_that_changes_the_text():
    base = options_key("tiny.en", "int8", DecodingOptions())
    assert base == options_key("tiny.en", "int8", DecodingOptions(batch_size=32))
    assert base != options_key("tiny.en", "float16", DecodingOptions())
    assert base != options_key("small.en", "int8", DecodingOptions())
    assert base != options_key("tiny.en", "int8", DecodingOptions(beam_size=1))
    assert base != options_key("tiny.en", "int8", DecodingOptions(seed=1))


def test_the_default_seed_keeps_the_cache_keys_of_results_cached_before_seeding():
    # The default options' key before ``DecodingOptions.seed`` existed (commit 5b96bba): an
    # upgrade must not re-transcribe every cached file.
    assert options_key("tiny.en", "int8", DecodingOptions()) == "e4fa5e49842cfc94"


def test_model_spec_is_the_one_identity_of_cache_key_and_metadata():
    from whisper_pipeline.resources.whisper import WhisperModelResource

    spec = WhisperModelResource(beam_size=3, device="cpu").spec()
    assert spec == ModelSpec("tiny.en", "cpu", "int8", DecodingOptions(beam_size=3))
    assert spec.cache_key == options_key("tiny.en", "int8", DecodingOptions(beam_size=3))
    assert spec.metadata() == {
        "model": "tiny.en",
        "device": "cpu",
        "compute_type": "int8",
        "beam_size": 3,
        "cache_key": spec.cache_key,
    }
    # One default per knob: the resource's are the decoding options'.
    assert WhisperModelResource().decoding_options() == DecodingOptions()

from datetime import UTC, datetime

from whisper_pipeline.core.batching import ChunkResult, DecodingOptions, Segment
from whisper_pipeline.core.results import (
    ContentResult,
    ModelSpec,
    assemble,
    build_tables,
    options_key,
)

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
                }
            ],
            transcribed_at=NOW,
        ),  # fmt: skip
        "x": ContentResult("x", "failed", error="model failed", transcribed_at=NOW),
    }
    spec = ModelSpec("tiny.en", "cpu", "int8", DecodingOptions(beam_size=5))
    files, transcripts, segments = build_tables(manifest, results, spec, datetime.now(UTC))
    status = {r["file_id"]: (r["status"], r["error"]) for r in files.to_pylist()}
    assert status == {
        "one.wav": ("ok", ""),
        "copy.wav": ("ok", ""),
        "bad.wav": ("failed", "model failed"),
        "lost.wav": ("failed", "no transcription result was produced"),
    }
    assert sorted(transcripts.column("file_id").to_pylist()) == ["copy.wav", "one.wav"]
    assert segments.num_rows == 2


def test_options_key_changes_with_anything_that_changes_the_text():
    base = options_key("tiny.en", "int8", DecodingOptions())
    assert base == options_key("tiny.en", "int8", DecodingOptions(batch_size=32))
    assert base != options_key("tiny.en", "float16", DecodingOptions())
    assert base != options_key("small.en", "int8", DecodingOptions())
    assert base != options_key("tiny.en", "int8", DecodingOptions(beam_size=1))


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

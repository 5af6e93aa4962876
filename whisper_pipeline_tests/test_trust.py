"""What a hostile but realistic day does to the cache and the tables: each probe is reproduced
first, in-process with the test double transcriber (``doubles.py``) on real recorded clips."""

import hashlib
import shutil
from pathlib import Path

import dagster as dg
import pytest

from whisper_pipeline.core import streaming
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.defs.assets import manifest
from whisper_pipeline.defs.landing import landing_states
from whisper_pipeline.resources import storage as storage_module
from whisper_pipeline_tests.doubles import FakeTranscriber, FakeTranscriberResource
from whisper_pipeline_tests.inprocess import materialize, read_tables, retries, step_failures

PARTITION = "2026-11-23"
LATER = "2026-11-24"
ORIGINAL, REPLACEMENT = "short/lj001_0002.wav", "short/jfk.flac"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_replaced_after_staging_is_never_cached_under_the_hash_it_had(
    corpus, tmp_path, monkeypatch
):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    clip = landing / "call.wav"
    shutil.copy(corpus / ORIGINAL, clip)
    original = sha256(clip)
    stage_file = manifest.stage_file

    def stage_then_replace(storage, partition_key, landed):
        row = stage_file(storage, partition_key, landed)
        shutil.copy(corpus / REPLACEMENT, clip)  # re-uploaded right after it was hashed
        return row

    monkeypatch.setattr(manifest, "stage_file", stage_then_replace)
    result = materialize(tmp_path, PARTITION)
    assert result.success, step_failures(result)
    monkeypatch.undo()

    (row,) = read_tables(tmp_path, PARTITION)["audio_files"]
    assert row["content_sha256"] == original
    assert row["status"] == "failed" and "content changed after staging" in row["error"]
    spec = FakeTranscriberResource().spec()
    assert original not in Storage(str(tmp_path)).cached_contents(spec.cache_key)

    # The next run stages the new bytes and transcribes them under their own hash ...
    assert materialize(tmp_path, PARTITION).success
    (row,) = read_tables(tmp_path, PARTITION)["audio_files"]
    assert row["content_sha256"] == sha256(corpus / REPLACEMENT) and row["status"] == "ok"
    # ... and the original recording, landing again later, is transcribed as itself.
    later = tmp_path / "raw" / LATER
    later.mkdir()
    shutil.copy(corpus / ORIGINAL, later / "call.wav")
    assert materialize(tmp_path, LATER).success
    (row,) = read_tables(tmp_path, LATER)["audio_files"]
    assert row["status"] == "ok"
    assert row["duration_s"] == pytest.approx(1.9, abs=0.5)  # lj001_0002, not the 11 s JFK clip


def test_an_unreadable_file_is_a_failed_row_and_the_others_publish(corpus, tmp_path, monkeypatch):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    shutil.copy(corpus / ORIGINAL, landing / "readable.wav")
    shutil.copy(corpus / REPLACEMENT, landing / "locked.flac")
    local = type(Storage(str(tmp_path)).fs)
    real_open = local._open

    def no_permission(self, path, *args, **kwargs):  # chmod 000 (the tests may run as root)
        if str(path).endswith("locked.flac"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(local, "_open", no_permission)
    result = materialize(tmp_path, PARTITION)
    assert result.success, step_failures(result)
    assert retries(result) == 0
    rows = {r["relative_path"]: r for r in read_tables(tmp_path, PARTITION)["audio_files"]}
    assert rows["readable.wav"]["status"] == "ok"
    assert rows["locked.flac"]["status"] == "failed"
    assert "PermissionError" in rows["locked.flac"]["error"]


def test_a_storage_error_after_transcription_retries_the_write_not_the_transcription(
    corpus, tmp_path, monkeypatch
):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    shutil.copy(corpus / ORIGINAL, landing / "a.wav")
    shutil.copy(corpus / REPLACEMENT, landing / "b.flac")
    monkeypatch.setattr(storage_module, "WRITE_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    write_results = streaming.write_results
    calls = {"writes": 0, "transcribed": 0}

    def flaky_write(*args, **kwargs):  # an S3 5xx on the first two attempts
        calls["writes"] += 1
        if calls["writes"] <= 2:
            raise OSError(5, "injected: 503 Slow Down")
        return write_results(*args, **kwargs)

    transcribe = FakeTranscriber.transcribe

    def counting(self, chunks):
        calls["transcribed"] += len(chunks)
        return transcribe(self, chunks)

    monkeypatch.setattr(streaming, "write_results", flaky_write)
    monkeypatch.setattr(FakeTranscriber, "transcribe", counting)
    result = materialize(tmp_path, PARTITION)
    assert result.success, step_failures(result)
    assert retries(result) == 0 and calls["writes"] == 3
    tables = read_tables(tmp_path, PARTITION)
    assert len(tables["transcripts"]) == 2
    # The double gives one segment per chunk: every chunk was decoded once, not once a try.
    assert calls["transcribed"] == len(tables["transcript_segments"]) > 0


def test_a_transient_model_failure_never_replaces_a_good_transcript(corpus, tmp_path):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    shutil.copy(corpus / ORIGINAL, landing / "a.wav")
    shutil.copy(corpus / REPLACEMENT, landing / "b.flac")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(tmp_path, PARTITION, instance=instance).success
    good = read_tables(tmp_path, PARTITION)
    flaky = FakeTranscriberResource(fail_contents=[sha256(landing / "a.wav")[:12]])

    # A re-run (redo, or a new model: a new cache key) whose model fails on a.wav once.
    result = materialize(tmp_path, PARTITION, flaky, redo=True, instance=instance)
    assert result.success, step_failures(result)
    tables = read_tables(tmp_path, PARTITION)
    (a_id,) = [r["file_id"] for r in good["audio_files"] if r["relative_path"] == "a.wav"]
    for name, rows in tables.items():  # a.wav keeps its published rows in all four tables
        assert [r for r in rows if r["file_id"] == a_id] == [
            r for r in good[name] if r["file_id"] == a_id
        ], name
    assert [r["status"] for r in tables["audio_files"]] == ["ok", "ok"]
    assert len(tables["transcripts"]) == 2
    (warning,) = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert warning.check_name == "no_failed_files"
    assert "1 of 2 failed in this run and kept their published transcript" in warning.description
    transcripts = [
        m for m in result.get_asset_materialization_events() if m.asset_key.path == ["transcripts"]
    ]
    assert transcripts[0].materialization.metadata["files_kept_after_failure"].value == 1
    # The partition is marked for a retry: the sensor and the nightly schedule request it.
    (state,) = landing_states(instance, Storage(str(tmp_path)), [PARTITION])
    assert state.stale

    # An explicit choice publishes the failure instead.
    result = materialize(
        tmp_path, PARTITION, flaky, redo=True, write_config={"keep_published_on_failure": False}
    )
    assert result.success
    rows = {r["relative_path"]: r for r in read_tables(tmp_path, PARTITION)["audio_files"]}
    assert rows["a.wav"]["status"] == "failed" and rows["b.flac"]["status"] == "ok"


def test_a_shard_whose_preprocessing_fails_is_given_up_and_the_other_shards_are_kept(
    corpus, tmp_path, monkeypatch
):
    # The probe: the transcription step reads shards while their preprocessing steps write
    # them, so it would wait forever for a shard whose step failed.
    from whisper_pipeline.core.staging import ShardWriter

    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    clips = {"jfk.flac": "short/jfk.flac", "a.wav": ORIGINAL, "b.wav": "short/lj001_0001.wav"}
    for name, source in clips.items():
        shutil.copy(corpus / source, landing / name)
    broken = sha256(landing / "jfk.flac")
    add_file = ShardWriter.add_file

    def failing(self, content_sha256, outcome):
        if content_sha256 == broken:
            raise dg.Failure("injected: the shard's disk failed", allow_retries=False)
        return add_file(self, content_sha256, outcome)

    monkeypatch.setattr(ShardWriter, "add_file", failing)
    three_shards = {"max_shards": 3, "min_audio_s_per_shard": 1}
    result = materialize(tmp_path, PARTITION, plan_config=three_shards)
    assert not result.success
    failures = step_failures(result)
    failed_shard = next(key for key in failures if "preprocess_shard" in key)
    transcription = next(message for key, message in failures.items() if "transcribe" in key)
    index = int(failed_shard.rsplit("_", 1)[1].rstrip("]"))
    assert f"preprocessing failed for shards [{index}]" in transcription
    assert "the results of the 2 contents transcribed were kept" in transcription
    assert len(failures) == 2  # nothing else failed; publishing never ran
    assert not (tmp_path / "tables").exists()

    monkeypatch.setattr(ShardWriter, "add_file", add_file)
    calls = {"transcribed": 0}
    transcribe = FakeTranscriber.transcribe

    def counting(self, chunks):
        calls["transcribed"] += len(chunks)
        return transcribe(self, chunks)

    monkeypatch.setattr(FakeTranscriber, "transcribe", counting)
    rerun = materialize(tmp_path, PARTITION, plan_config=three_shards)
    assert rerun.success, step_failures(rerun)
    assert calls["transcribed"] == 1  # only the given-up shard's clip: the others were cached
    assert len(read_tables(tmp_path, PARTITION)["transcripts"]) == 3

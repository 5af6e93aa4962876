"""Publishing never destroys good data: config reaches every consumer, bad config and failed
models fail loudly before replacing tables, and the tables stay consistent at every failure point.

In-process with the test double transcriber (``doubles.py``): real audio, real preprocessing,
real storage and Dagster, no model.
"""

import shutil
from pathlib import Path

import ctranslate2
import dagster as dg
import pyarrow as pa
import pytest

from whisper_pipeline.core.storage import Storage
from whisper_pipeline.defs.assets import publishing
from whisper_pipeline.defs.checks import CHECKS, NOT_PUBLISHED, WARNINGS
from whisper_pipeline.resources.whisper import WhisperModelResource
from whisper_pipeline_tests.doubles import FakeTranscriberResource, fake_text
from whisper_pipeline_tests.inprocess import (
    TABLES,
    materialize,
    read_tables,
    retries,
    step_failures,
)

PARTITION = "2026-11-18"
CLIPS = ("short/jfk.flac", "short/lj001_0001.wav", "short/lj001_0002.wav")


def land(corpus: Path, root: Path, names=CLIPS, partition: str = PARTITION) -> Path:
    """Copy corpus clips into the partition's landing folder (flat names)."""
    landing = root / "raw" / partition
    landing.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(corpus / name, landing / Path(name).name)
    return landing


def table_bytes(root: Path) -> dict[str, bytes]:
    return {
        name: (root / "tables" / name / f"date={PARTITION}" / "part-0.parquet").read_bytes()
        for name in TABLES
    }


def assert_consistent(tables: dict) -> None:
    """No file is transcribed (ok/no_speech) in audio_files without its transcripts row."""
    if tables["audio_files"] is None:
        return
    transcribed = {r["file_id"] for r in tables["audio_files"] if r["status"] != "failed"}
    assert tables["transcripts"] is not None
    missing = transcribed - {r["file_id"] for r in tables["transcripts"]}
    assert not missing, f"transcribed in audio_files without a transcript: {missing}"


@pytest.fixture(scope="module")
def published_once(corpus, tmp_path_factory):
    """A partition published once from three clips (landing, cache and tables); its root."""
    root = tmp_path_factory.mktemp("published") / "root"
    land(corpus, root)
    result = materialize(root, PARTITION)
    assert result.success, step_failures(result)
    return root


@pytest.fixture
def published(published_once, tmp_path):
    """A copy of ``published_once`` for one test to change; returns its root.

    Everything a run reads or writes is under the root (the ephemeral instance keeps nothing),
    so the copy is the same as publishing again.
    """
    return Path(shutil.copytree(published_once, tmp_path / "root"))


def test_run_config_root_reaches_every_consumer(published, tmp_path, monkeypatch):
    # The probe: with `root` set only in run config, the IO managers wrote to ./data.
    monkeypatch.delenv("WHISPER_PIPELINE_ROOT", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = materialize(published, PARTITION, redo=True)
    assert result.success, step_failures(result)
    assert not (cwd / "data").exists()
    tables = read_tables(published, PARTITION)
    assert sorted(r["relative_path"] for r in tables["audio_files"]) == sorted(
        Path(name).name for name in CLIPS
    )
    assert {r["status"] for r in tables["audio_files"]} == {"ok"}
    texts = {r["content_sha256"]: r["text"] for r in tables["transcripts"]}
    assert all(text == fake_text(sha, 0) for sha, text in texts.items())
    assert (published / "staging" / "audio_manifest" / f"date={PARTITION}").exists()
    # Each run removed its staging folder when it published, and the empty partition folder.
    assert not (published / "staging" / PARTITION).exists()
    assert list((published / "cache").rglob("*.json"))


def test_endpoint_url_from_run_config_reaches_every_consumer(corpus, s3_server, monkeypatch):
    # The probe: with `endpoint_url` set only in run config, the manifest went to real AWS.
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "WHISPER_PIPELINE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    s3_server.put_objects(
        "wiring",
        {f"root/raw/{PARTITION}/{Path(n).name}": (corpus / n).read_bytes() for n in CLIPS[:2]},
    )
    result = materialize("s3://wiring/root", PARTITION, endpoint_url=s3_server.endpoint_url)
    assert result.success, step_failures(result)
    store = Storage("s3://wiring/root", s3_server.storage_options)
    for name in TABLES:
        table = store.read_partition(name, PARTITION)
        assert table.num_rows >= 2, name
    assert store.read_partition("audio_manifest", PARTITION, area="staging").num_rows == 2
    assert len(store.fs.find(store.path("cache"))) == 2


INVALID_CONFIGS = [
    ({"beam_size": 0}, "beam_size must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"seed": -1}, "seed must be from 0 to 4294967295"),
    ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
    ({"compute_type": "float17"}, "compute_type 'float17' is not supported"),
    ({"language": "xx"}, "not a Whisper language code"),
]
if ctranslate2.get_cuda_device_count() == 0:
    INVALID_CONFIGS.append(({"device": "cuda"}, "sees no CUDA device"))


@pytest.mark.parametrize(("config", "message"), INVALID_CONFIGS)
def test_invalid_whisper_config_fails_first_without_retry_and_keeps_tables(
    published, config, message
):
    before = table_bytes(published)
    result = materialize(published, PARTITION, WhisperModelResource(**config), redo=True)
    assert not result.success
    failures = step_failures(result)
    assert list(failures) == ["audio_manifest"] and message in failures["audio_manifest"]
    assert retries(result) == 0
    assert table_bytes(published) == before


def test_model_failing_on_every_file_fails_and_keeps_tables(published):
    before = table_bytes(published)
    result = materialize(
        published, PARTITION, FakeTranscriberResource(fail_contents=["*"]), redo=True
    )
    assert not result.success
    (message,) = [m for k, m in step_failures(result).items() if k.endswith("write_tables")]
    assert "failed for every one of the 3 files" in message
    assert retries(result) == 0
    assert table_bytes(published) == before


def test_model_failing_on_one_file_publishes_a_failure_row_when_told_to(published):
    # By default the file would keep its published transcript (test_trust.py).
    sha = read_tables(published, PARTITION)["transcripts"][0]["content_sha256"]
    result = materialize(
        published,
        PARTITION,
        FakeTranscriberResource(fail_contents=[sha]),
        redo=True,
        write_config={"keep_published_on_failure": False},
    )
    assert result.success, step_failures(result)
    files = {r["content_sha256"]: r for r in read_tables(published, PARTITION)["audio_files"]}
    assert files[sha]["status"] == "failed"
    assert files[sha]["error"].startswith("model failed on chunk 0: RuntimeError")
    assert sum(r["status"] == "ok" for r in files.values()) == 2


def test_missing_landing_folder_fails_and_keeps_tables(published):
    before = table_bytes(published)
    (published / "raw" / PARTITION).rename(published / "raw" / "elsewhere")
    result = materialize(published, PARTITION)
    assert not result.success
    message = step_failures(result)["audio_manifest"]
    assert "does not exist" in message and "left as they are" in message
    assert retries(result) == 0
    assert table_bytes(published) == before


def test_existing_empty_landing_folder_publishes_empty_tables(published):
    for path in (published / "raw" / PARTITION).iterdir():
        path.unlink()
    result = materialize(published, PARTITION)
    assert result.success, step_failures(result)
    assert read_tables(published, PARTITION) == {name: [] for name in TABLES}


FAILURE_POINTS = [
    pytest.param(0, False, id="before-the-first-write"),
    pytest.param(1, False, id="after-one-write"),
    pytest.param(2, False, id="after-two-writes"),
    pytest.param(3, False, id="after-three-writes"),
    # A plain OSError goes through the step's RetryPolicy (2 + 4 + 8 s of back-off).
    pytest.param(1, True, id="after-one-write-with-retries", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("deleted", [True, False], ids=["one-deleted-one-added", "one-added"])
@pytest.mark.parametrize(("writes_before_failure", "retried"), FAILURE_POINTS)
def test_tables_are_consistent_at_every_failure_point(
    published, corpus, monkeypatch, writes_before_failure, retried, deleted
):
    # The probe: transcripts unwritable, audio_files already replaced, a file `ok` without its
    # transcript. Here one file is added (the common case: a late upload), one deleted or not,
    # and table writes fail after the Nth.
    landing = published / "raw" / PARTITION
    if deleted:
        (landing / Path(CLIPS[0]).name).unlink()
    land(corpus, published, ["short/lj001_0003.wav"])
    replace = Storage.replace_partition
    writes = []

    def failing_replace(self, table, partition_key, data, area="tables"):
        if area == "tables":
            if len(writes) >= writes_before_failure:
                message = f"injected: {table} is not writable"
                if retried:
                    raise PermissionError(message)
                raise dg.Failure(message, allow_retries=False)
            writes.append(table)
        return replace(self, table, partition_key, data, area)

    monkeypatch.setattr(Storage, "replace_partition", failing_replace)
    failed = materialize(published, PARTITION)
    assert not failed.success
    assert_consistent(read_tables(published, PARTITION))

    monkeypatch.setattr(Storage, "replace_partition", replace)
    repaired = materialize(published, PARTITION)
    assert repaired.success, step_failures(repaired)
    tables = read_tables(published, PARTITION)
    assert_consistent(tables)
    names = sorted(r["relative_path"] for r in tables["audio_files"])
    expected = ["lj001_0001.wav", "lj001_0002.wav", "lj001_0003.wav"]
    assert names == sorted(expected + ([] if deleted else [Path(CLIPS[0]).name]))
    assert len(tables["transcripts"]) == len(names)


@pytest.mark.parametrize("writes_before_failure", [0, 1, 2, 3])
def test_a_first_publish_is_consistent_at_every_failure_point(
    corpus, tmp_path, monkeypatch, writes_before_failure
):
    land(corpus, tmp_path)
    replace = Storage.replace_partition
    writes = []

    def failing_replace(self, table, partition_key, data, area="tables"):
        if area == "tables":
            if len(writes) >= writes_before_failure:
                raise dg.Failure(f"injected: {table} is not writable", allow_retries=False)
            writes.append(table)
        return replace(self, table, partition_key, data, area)

    monkeypatch.setattr(Storage, "replace_partition", failing_replace)
    assert not materialize(tmp_path, PARTITION).success
    assert_consistent(read_tables(tmp_path, PARTITION))


def test_tables_failing_a_blocking_check_are_not_published(published, monkeypatch):
    # The probe: the built transcripts lose a row (one ok file without its transcript). The
    # checks run before publishing: the step fails, the partition stays as it was, and the
    # failed check is reported on the asset with the reason.
    before = table_bytes(published)
    # A file that fails too: its non-blocking warning is reported, and blocks nothing.
    (published / "raw" / PARTITION / "broken.mp3").write_bytes(b"not audio")
    build = publishing.build_tables

    def losing_a_row(*args, **kwargs):
        files, transcripts, segments, words = build(*args, **kwargs)
        return files, transcripts.slice(1), segments, words

    monkeypatch.setattr(publishing, "build_tables", losing_a_row)
    result = materialize(published, PARTITION, redo=True)
    assert not result.success
    (message,) = [m for k, m in step_failures(result).items() if k.endswith("write_tables")]
    assert "checks failed: one_row_per_transcribed_file (transcripts); the partition's" in message
    assert retries(result) == 0
    assert table_bytes(published) == before
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(CHECKS) + len(WARNINGS)
    lost, broken = sorted((e for e in evaluations if not e.passed), key=lambda e: not e.blocking)
    assert lost.check_name == "one_row_per_transcribed_file"
    assert lost.description == NOT_PUBLISHED and lost.blocking
    assert lost.metadata["rows"].value == 2 and lost.metadata["expected"].value == 3
    assert broken.check_name == "no_failed_files" and broken.description == "1 of 4 files failed"
    assert not result.get_asset_materialization_events()[1:]  # only audio_manifest's

    monkeypatch.setattr(publishing, "build_tables", build)
    repaired = materialize(published, PARTITION, redo=True)
    assert repaired.success, step_failures(repaired)
    assert all(e.passed for e in repaired.get_asset_check_evaluations() if e.blocking)
    assert len(read_tables(published, PARTITION)["transcripts"]) == 3


WRITE_ORDERS = [
    # A re-run: the published transcripts already cover every file.
    pytest.param([], [], ["audio_files", "transcripts"], id="same-files"),
    pytest.param([CLIPS[0]], [], ["audio_files", "transcripts"], id="one-deleted"),
    # A late upload: the new transcripts go first.
    pytest.param([], ["short/lj001_0003.wav"], ["transcripts", "audio_files"], id="one-added"),
    # Both: a bridge (new rows and the deleted file's) goes before both.
    pytest.param([CLIPS[0]], ["short/lj001_0003.wav"],
                 ["transcripts", "audio_files", "transcripts"], id="one-deleted-one-added"),
]  # fmt: skip


@pytest.mark.parametrize(("deleted", "added", "order"), WRITE_ORDERS)
def test_transcripts_are_written_twice_only_when_files_are_added_and_deleted(
    published, corpus, monkeypatch, deleted, added, order
):
    for clip in deleted:
        (published / "raw" / PARTITION / Path(clip).name).unlink()
    land(corpus, published, added)
    replace = Storage.replace_partition
    writes = []

    def recording_replace(self, table, partition_key, data, area="tables"):
        if area == "tables":
            writes.append(table)
        return replace(self, table, partition_key, data, area)

    monkeypatch.setattr(Storage, "replace_partition", recording_replace)
    result = materialize(published, PARTITION)
    assert result.success, step_failures(result)
    assert writes == [*order, "transcript_segments", "transcript_words"]
    assert_consistent(read_tables(published, PARTITION))


def test_bridge_is_needed_without_it(published, corpus):
    # Without the bridge write, the first failure point above is inconsistent: the new
    # audio_files lists a new file as ok while the old transcripts lack it.
    land(corpus, published, ["short/lj001_0003.wav"])
    store = Storage(str(published))
    old = read_tables(published, PARTITION)
    result = materialize(published, PARTITION)
    assert result.success
    new = read_tables(published, PARTITION)
    assert_consistent(new)
    with pytest.raises(AssertionError, match="without a transcript"):
        assert_consistent({**new, "transcripts": old["transcripts"]})
    assert store.read_partition("transcripts", PARTITION).num_rows == 4
    assert isinstance(store.read_partition("audio_files", PARTITION), pa.Table)


def test_deployed_profiles_keep_op_outputs_under_the_storage_root(corpus, tmp_path):
    # Steps of the celery and k8s profiles run on other machines: the shard manifests they
    # pass each other must live under the storage root, not in $DAGSTER_HOME on the run's host.
    root = tmp_path / "root"
    land(corpus, root)
    failing = materialize(root, PARTITION, FakeTranscriberResource(fail_contents=["*"]),
                          profile="production")  # fmt: skip
    assert not failing.success  # write_tables refuses: the run's staging folder stays
    run_dir = root / "staging" / PARTITION / failing.run_id
    pickles = sorted(p.relative_to(run_dir / "io").as_posix() for p in run_dir.rglob("*.pkl"))
    assert "transcript_tables.plan_shards/shards.shard_00000.pkl" in pickles
    assert "transcript_tables.plan_shards/groups.group_00000.pkl" in pickles
    assert "transcript_tables.transcribe_shards[group_00000]/result.pkl" in pickles
    result = materialize(root, PARTITION, profile="production")
    assert result.success, step_failures(result)
    assert not (root / "staging" / PARTITION / result.run_id).exists()  # removed on publishing
    assert len(read_tables(root, PARTITION)["transcripts"]) == len(CLIPS)

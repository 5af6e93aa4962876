"""One row per landed entry, whatever it is: local oddities and object-store keys."""

import hashlib
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from whisper_pipeline.core.schema import AUDIO_FILES, STATUS_FAILED, STATUS_OK
from whisper_pipeline.core.storage import LandedFile, Storage
from whisper_pipeline.defs.assets.manifest import stage_file

PARTITION = "2026-11-20"
CLIP = "short/jfk.flac"


def stage_within(storage: Storage, landed: LandedFile, timeout_s: float = 10.0) -> dict:
    """``stage_file`` in a daemon thread, so a test that would block (a FIFO) fails instead."""
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(row=stage_file(storage, PARTITION, landed)), daemon=True
    )
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"stage_file blocked on {landed.relative_path}"
    return result["row"]


# --- local filesystem ----------------------------------------------------------------------

LOCAL_ENTRIES = [
    # (relative path, error): every non-hidden entry, in relative-path order.
    ("dangling.wav", "broken symbolic link (target missing.wav does not exist)"),
    ("folder-link", "symbolic link to a directory (not followed)"),
    ("inside.flac", ""),
    ("loop-a.wav", "symbolic link loop"),
    ("loop-b.wav", "symbolic link loop"),
    ("nested/deeper/clip é.flac", ""),
    ("outside.wav", "symbolic link points outside the landing zone (not read)"),
    ("pipe-link.wav", "symbolic link to a non-regular file (FIFO)"),
    ("pipe.wav", "not a regular file (FIFO)"),
    ("sock", "not a regular file (socket)"),
    ("speech.flac", ""),
]


@pytest.fixture
def local_landing(tmp_path: Path, corpus: Path, monkeypatch) -> Storage:
    """A landing folder holding one of each kind of entry in ``LOCAL_ENTRIES``, plus hidden ones."""
    landing = tmp_path / "raw" / PARTITION
    (landing / "nested" / "deeper").mkdir(parents=True)
    (landing / ".hidden-folder").mkdir()
    shutil.copy(corpus / CLIP, landing / "speech.flac")
    shutil.copy(corpus / CLIP, landing / "nested" / "deeper" / "clip é.flac")
    (tmp_path / "secret.wav").write_bytes(b"outside the landing zone")
    (landing / "dangling.wav").symlink_to("missing.wav")
    (landing / "loop-a.wav").symlink_to("loop-b.wav")
    (landing / "loop-b.wav").symlink_to("loop-a.wav")
    (landing / "folder-link").symlink_to(landing / "nested", target_is_directory=True)
    (landing / "outside.wav").symlink_to(tmp_path / "secret.wav")
    (landing / "inside.flac").symlink_to("speech.flac")
    os.mkfifo(landing / "pipe.wav")
    (landing / "pipe-link.wav").symlink_to("pipe.wav")
    monkeypatch.chdir(landing)  # a relative name: AF_UNIX paths are limited to ~107 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock")
    (landing / ".DS_Store").write_bytes(b"x")
    (landing / "nested" / ".partial.flac").write_bytes(b"x")
    (landing / ".hidden-folder" / "clip.flac").write_bytes(b"x")
    return Storage(str(tmp_path))


def test_local_listing_has_one_entry_per_visible_entry(local_landing: Storage, corpus: Path):
    found = local_landing.list_landed(PARTITION)
    assert [(f.relative_path, f.error) for f in found] == LOCAL_ENTRIES
    sizes = {f.relative_path: f.size_bytes for f in found}
    clip_size = (corpus / CLIP).stat().st_size
    assert sizes["speech.flac"] == sizes["inside.flac"] == clip_size
    assert all(size == 0 for path, size in sizes.items() if dict(LOCAL_ENTRIES)[path])
    # A link to a file inside is read through its resolved target.
    inside = next(f for f in found if f.relative_path == "inside.flac")
    assert inside.path == os.path.realpath(local_landing.raw_dir(PARTITION) + "/speech.flac")


@pytest.mark.parametrize("relative_path, error", LOCAL_ENTRIES)
def test_local_entry_becomes_one_row(local_landing: Storage, corpus: Path, relative_path, error):
    landed = {f.relative_path: f for f in local_landing.list_landed(PARTITION)}[relative_path]
    row = stage_within(local_landing, landed)
    assert row["relative_path"] == relative_path
    assert (row["status"], row["error"]) == ((STATUS_FAILED, error) if error else (STATUS_OK, ""))
    if error:
        assert row["content_sha256"] is None
        assert row["duration_s"] is None
    else:
        expected = hashlib.sha256((corpus / CLIP).read_bytes()).hexdigest()
        assert row["content_sha256"] == expected
        assert row["codec"] == "flac"
        assert row["duration_s"] > 10


def test_local_folder_that_cannot_be_listed_becomes_one_failed_entry(tmp_path: Path, monkeypatch):
    landing = tmp_path / "raw" / PARTITION
    (landing / "locked").mkdir(parents=True)
    (landing / "locked" / "clip.wav").write_bytes(b"x")
    (landing / "a.wav").write_bytes(b"1")
    scandir = os.scandir

    def refuse_locked(path):
        # chmod 000 does not stop root, so the refusal is injected.
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    found = Storage(str(tmp_path)).list_landed(PARTITION)
    assert [(f.relative_path, f.error) for f in found] == [
        ("a.wav", ""),
        (
            "locked",
            "folder cannot be listed (PermissionError: Permission denied);"
            " its contents are not read",
        ),
    ]


def test_local_name_that_is_not_utf8_becomes_a_failed_row(tmp_path: Path):
    landing = tmp_path / "raw" / PARTITION
    landing.mkdir(parents=True)
    try:
        with open(os.path.join(os.fsencode(landing), b"bad-\xff.wav"), "wb") as handle:
            handle.write(b"x")
    except OSError:
        pytest.skip("this filesystem refuses names that are not UTF-8")
    storage = Storage(str(tmp_path))
    [landed] = storage.list_landed(PARTITION)
    assert (landed.relative_path, landed.error) == (
        "bad-\\xff.wav",
        "file name is not valid UTF-8; not read, rename the file",
    )
    row = stage_within(storage, landed)
    assert row["status"] == STATUS_FAILED
    assert pa.Table.from_pylist([row], schema=AUDIO_FILES).num_rows == 1  # storable as UTF-8


# --- object store (moto) -------------------------------------------------------------------

S3_PREFIX = f"prefix/raw/{PARTITION}/"
ALIASING = "key has an empty, '.' or '..' path segment; not read, it would alias another path"
VERSION_ID = (
    "key contains '?versionId=', which s3fs parses as an object version of the key before it;"
    " it cannot be read by name, rename the object"
)
S3_KEYS = [
    # (key below raw/YYYY-MM-DD/, bytes: "clip" for the real clip, error or None when ignored)
    ("", b"", None),  # the partition folder's own marker
    ("sub/", b"", None),  # a console's folder marker
    ("nested/", b"", None),
    (".DS_Store", b"x", None),  # hidden: skipped as before
    ("nested/.partial.flac", b"x", None),
    ("speech.flac", "clip", ""),
    ("nested/deeper/clip with space é.flac", "clip", ""),
    ("a/../b.wav", "clip", ALIASING),
    ("./c.wav", b"xx", ALIASING),
    ("c//d.wav", b"xx", ALIASING),
    ("full/", b"xx", ALIASING),  # a "folder" key holding bytes
    ("x?versionId=abc.flac", "clip", VERSION_ID),
]


@pytest.fixture
def s3_landing(s3_server, corpus: Path, monkeypatch) -> Storage:
    """A fresh bucket holding ``S3_KEYS`` (plus a neighbouring partition), credentials in env."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    clip = (corpus / CLIP).read_bytes()
    bucket = f"landing-{uuid.uuid4().hex[:12]}"
    objects = {S3_PREFIX + key: clip if data == "clip" else data for key, data, _ in S3_KEYS}
    objects["prefix/raw/2026-11-21/other.flac"] = clip
    objects[f"prefix/raw/{PARTITION}-not-a-partition.flac"] = clip
    s3_server.put_objects(bucket, objects)
    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    return Storage(f"s3://{bucket}/prefix", {**options, "skip_instance_cache": True})


def test_s3_listing_ignores_markers_and_flags_keys_that_cannot_be_read(s3_landing, corpus):
    found = s3_landing.list_landed(PARTITION)
    expected = sorted((key, error) for key, _, error in S3_KEYS if error is not None)
    assert [(f.relative_path, f.error) for f in found] == expected
    clip_size = (corpus / CLIP).stat().st_size
    for landed, (key, data, _) in zip(
        found, sorted(k for k in S3_KEYS if k[2] is not None), strict=True
    ):
        assert landed.size_bytes == (clip_size if data == "clip" else len(data))
        assert landed.path == f"{s3_landing.root}/raw/{PARTITION}/{key}"
    assert s3_landing.list_landed("2026-11-22") == []


def test_s3_entries_become_one_row_each(s3_landing, corpus):
    expected_sha = hashlib.sha256((corpus / CLIP).read_bytes()).hexdigest()
    rows = [stage_within(s3_landing, f) for f in s3_landing.list_landed(PARTITION)]
    errors = {key: error for key, _, error in S3_KEYS if error is not None}
    for row in rows:
        error = errors[row["relative_path"]]
        assert (row["status"], row["error"]) == (
            (STATUS_FAILED, error) if error else (STATUS_OK, "")
        )
        assert row["source_uri"].startswith("s3://landing-")
        if error:
            assert row["content_sha256"] is None
        else:
            assert (row["content_sha256"], row["codec"]) == (expected_sha, "flac")
            assert row["duration_s"] > 10
    assert len({row["file_id"] for row in rows}) == len(rows)


def test_s3fs_cannot_read_a_key_containing_version_id_by_name(s3_landing):
    """Why such keys are refused: s3fs reads the key before ``?versionId=`` (missing here)."""
    path = s3_landing.path("raw", PARTITION, "x?versionId=abc.flac")
    assert s3_landing.fs.split_path(path)[1].endswith(f"{PARTITION}/x")
    with pytest.raises(FileNotFoundError):
        s3_landing.fs.cat_file(path)

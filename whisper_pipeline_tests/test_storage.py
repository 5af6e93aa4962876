import errno
import os

import duckdb
import pyarrow as pa
import pytest

from whisper_pipeline.core.storage import Storage


def test_replace_partition_replaces_rows_and_keeps_one_file(tmp_path):
    storage = Storage(str(tmp_path))
    storage.replace_partition("t", "2026-11-20", pa.table({"x": [1, 2, 3]}))
    storage.replace_partition("t", "2026-11-20", pa.table({"x": [4, 5]}))
    storage.replace_partition("t", "2026-11-21", pa.table({"x": [6]}))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "tables/t/date=2026-11-20/part-0.parquet",
        "tables/t/date=2026-11-21/part-0.parquet",
    ]
    rows = duckdb.sql(
        f"select date, x from read_parquet('{tmp_path}/tables/t/*/*.parquet',"
        " hive_partitioning=true)"
        " order by x"
    ).fetchall()
    assert [(str(d), x) for d, x in rows] == [
        ("2026-11-20", 4),
        ("2026-11-20", 5),
        ("2026-11-21", 6),
    ]


def test_crash_while_writing_leaves_the_previous_version_readable(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    storage.replace_partition("t", "2026-11-20", pa.table({"x": [1, 2, 3]}))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.replace_partition("t", "2026-11-20", pa.table({"x": [9]}))
    assert storage.read_partition("t", "2026-11-20").column("x").to_pylist() == [1, 2, 3]
    # No temporary file is left where readers' globs would pick it up.
    leftovers = [p.name for p in (tmp_path / "tables/t/date=2026-11-20").iterdir()]
    assert leftovers == ["part-0.parquet"]


def test_list_landed_recurses_and_skips_hidden_files(tmp_path):
    landing = tmp_path / "raw" / "2026-11-20"
    (landing / "nested dir" / "é").mkdir(parents=True)
    (landing / "a.wav").write_bytes(b"1")
    (landing / "nested dir" / "é" / "B.MP3").write_bytes(b"22")
    (landing / ".DS_Store").write_bytes(b"x")
    found = Storage(str(tmp_path)).list_landed("2026-11-20")
    assert [(f.relative_path, f.size_bytes) for f in found] == [
        ("a.wav", 1),
        ("nested dir/é/B.MP3", 2),
    ]
    assert Storage(str(tmp_path)).list_landed("2026-11-21") == []


def test_schema_doc_is_generated_from_the_code():
    from whisper_pipeline.core.schema import schema_markdown
    from whisper_pipeline_tests.conftest import REPOSITORY

    assert (REPOSITORY / "docs" / "SCHEMA.md").read_text().endswith(schema_markdown())


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        storage.write_bytes_atomic(storage.path("tables", "x", "part-0.parquet"), b"data")
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename.endswith("tables/x/part-0.parquet")
    assert "tables/x/part-0.parquet" in str(raised.value)
    assert not list(tmp_path.rglob("*.tmp-*"))  # the temporary file went

"""Checks of a partition's published tables, read with DuckDB, shared by the live-server tests."""

import duckdb

TABLES = ("audio_files", "transcripts", "transcript_segments")


def read_tables(root, partition: str) -> dict[str, str]:
    """A DuckDB ``read_parquet(...)`` expression per table, for one partition under ``root``."""
    return {
        name: f"read_parquet('{root}/tables/{name}/date={partition}/*.parquet')" for name in TABLES
    }


def assert_each_file_once(root, partition: str, relative_paths: list[str]) -> None:
    """Every landed file has one ``ok`` row, one non-empty transcript and unique segments."""
    tables = read_tables(root, partition)
    files = duckdb.sql(f"select relative_path, status from {tables['audio_files']}").fetchall()
    assert sorted(path for path, _ in files) == sorted(relative_paths)
    assert {status for _, status in files} == {"ok"}
    ((transcripts, distinct, empty),) = duckdb.sql(
        "select count(*), count(distinct file_id), count(*) filter (text = '')"
        f" from {tables['transcripts']}"
    ).fetchall()
    assert transcripts == distinct == len(relative_paths) and empty == 0
    ((segments, distinct_segments),) = duckdb.sql(
        "select count(*), count(distinct (file_id, segment_index))"
        f" from {tables['transcript_segments']}"
    ).fetchall()
    assert segments == distinct_segments > 0

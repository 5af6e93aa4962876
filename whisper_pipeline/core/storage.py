"""One fsspec root holding the landing zone, staging area and tables (local path or ``s3://``).

Layout under the root::

    raw/YYYY-MM-DD/**                  landing zone, one folder per daily partition
    staging/YYYY-MM-DD/<run>/          one run's chunk features (deleted when the run ends well)
    staging/audio_manifest/date=.../   the staging asset
    cache/<options key>/<sha[:2]>/<sha>.json   one transcription result per distinct content
    tables/<table>/date=YYYY-MM-DD/part-0.parquet
"""

import io
import os
import posixpath
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PARTITION_FILE = "part-0.parquet"


@dataclass(frozen=True)
class LandedFile:
    """A file found in the landing zone.

    Attributes:
        path: Path inside the filesystem (no protocol).
        relative_path: Path below ``raw/YYYY-MM-DD/``, POSIX separators.
        size_bytes: Size in bytes.
    """

    path: str
    relative_path: str
    size_bytes: int


class Storage:
    """Reads and writes everything under one root.

    Args:
        root: A local path or a URI fsspec understands (``s3://bucket/prefix``).
        storage_options: Passed to the fsspec filesystem (e.g. ``endpoint_url`` for S3).
    """

    def __init__(self, root: str, storage_options: dict | None = None):
        self.fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = base.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        """Join ``parts`` under the root (POSIX separators)."""
        return posixpath.join(self.root, *parts)

    def uri(self, path: str) -> str:
        """Full URI of a path (``file:///...`` or ``s3://...``)."""
        return self.fs.unstrip_protocol(path)

    def raw_dir(self, partition_key: str) -> str:
        """The landing folder of a daily partition."""
        return self.path("raw", partition_key)

    def staging_dir(self, partition_key: str, run_id: str) -> str:
        """Scratch folder of one run for one partition."""
        return self.path("staging", partition_key, run_id)

    def result_dir(self, options_key: str) -> str:
        """Folder of cached results for one model + options key."""
        return self.path("cache", options_key)

    def result_path(self, options_key: str, content_sha256: str) -> str:
        """Cached result of one content under one model + options key."""
        return posixpath.join(
            self.result_dir(options_key), content_sha256[:2], f"{content_sha256}.json"
        )

    def cached_contents(self, options_key: str) -> set[str]:
        """SHA-256 of every content with a cached result under ``options_key`` (one listing)."""
        directory = self.result_dir(options_key)
        if not self.fs.exists(directory):
            return set()
        return {
            posixpath.basename(path)[: -len(".json")]
            for path in self.fs.find(directory)
            if path.endswith(".json")
        }

    def table_dir(self, table: str, partition_key: str, area: str = "tables") -> str:
        """Hive partition folder of a table: ``<area>/<table>/date=<partition_key>``."""
        return self.path(area, table, f"date={partition_key}")

    def list_landed(self, partition_key: str) -> list[LandedFile]:
        """List every file under the partition's landing folder, subfolders included.

        Names starting with ``.`` (``.DS_Store``, partial uploads) are skipped.

        Returns:
            Files sorted by relative path; empty when the folder does not exist.
        """
        base = self.raw_dir(partition_key)
        if not self.fs.exists(base):
            return []
        found = []
        for path, info in self.fs.find(base, detail=True).items():
            if info.get("type") == "directory":
                continue
            relative = posixpath.relpath(path, base)
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            found.append(LandedFile(path, relative, int(info.get("size") or 0)))
        return sorted(found, key=lambda f: f.relative_path)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write a file so readers see the old content or the new, never a part.

        Local: write a hidden temporary file beside it, then ``os.replace`` (atomic on POSIX).
        Object stores: one PUT, which S3 and GCS make visible atomically.
        """
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def write_parquet(self, path: str, table: pa.Table) -> None:
        """Write a Parquet file atomically (see ``write_bytes_atomic``), zstd-compressed."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes_atomic(path, buffer.getvalue())

    def read_parquet(self, path: str, schema: pa.Schema | None = None) -> pa.Table:
        """Read one Parquet file (raises ``FileNotFoundError`` when it is missing)."""
        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle, schema=schema)

    def replace_partition(
        self, table: str, partition_key: str, data: pa.Table, area: str = "tables"
    ) -> str:
        """Replace a table's partition with ``data``, atomically; returns the file's URI.

        The partition is always the single file ``part-0.parquet``; any other Parquet file left
        in the folder by an older layout is removed after the new one is in place.
        """
        directory = self.table_dir(table, partition_key, area)
        target = posixpath.join(directory, PARTITION_FILE)
        self.write_parquet(target, data)
        for other in self.fs.glob(posixpath.join(directory, "*.parquet")):
            if posixpath.basename(other) != PARTITION_FILE:
                self.fs.rm(other)
        return self.uri(target)

    def read_partition(self, table: str, partition_key: str, area: str = "tables") -> pa.Table:
        """Read a table's partition (raises ``FileNotFoundError`` when never written)."""
        directory = self.table_dir(table, partition_key, area)
        return self.read_parquet(posixpath.join(directory, PARTITION_FILE))

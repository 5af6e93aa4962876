"""One fsspec root holding the landing zone, staging area and tables (local path or ``s3://``).

Layout under the root::

    raw/YYYY-MM-DD/**                  landing zone, one folder per daily partition
    staging/YYYY-MM-DD/<run>/          one run's chunk features (deleted when the run ends well)
    staging/audio_manifest/date=.../   the staging asset
    cache/<options key>/<sha[:2]>/<sha>.json   one transcription result per distinct content
    tables/<table>/date=YYYY-MM-DD/part-0.parquet
    exports/subtitles/date=YYYY-MM-DD/<name>.srt|.vtt   subtitles of each transcribed file
"""

import errno
import hashlib
import io
import json
import os
import posixpath
import stat
import uuid
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PARTITION_FILE = "part-0.parquet"


@dataclass(frozen=True)
class LandedFile:
    """An entry found in the landing zone: a file to read, or one that gets a ``failed`` row.

    Attributes:
        path: Path inside the filesystem (no protocol) that is read. For a symbolic link to a
            file inside the landing folder, the link's resolved target.
        relative_path: Path below ``raw/YYYY-MM-DD/``, POSIX separators.
        size_bytes: Size in bytes (0 for local entries that are not read).
        error: Why the entry is not read (it still gets a row); empty for a file to read.
        version: What changes when the file is replaced: the ETag on object stores, else the
            modification time (ns); empty for entries that are not read.
    """

    path: str
    relative_path: str
    size_bytes: int
    error: str = ""
    version: str = ""


# Reasons an entry of the landing zone is not read (``LandedFile.error``).
LANDED_BROKEN_LINK = "broken symbolic link (target {target} does not exist)"
LANDED_LINK_LOOP = "symbolic link loop"
LANDED_LINK_UNRESOLVED = "symbolic link cannot be resolved ({reason})"
LANDED_LINK_OUTSIDE = "symbolic link points outside the landing zone (not read)"
LANDED_LINK_TO_FOLDER = "symbolic link to a directory (not followed)"
LANDED_LINK_TO_SPECIAL = "symbolic link to a non-regular file ({kind})"
LANDED_SPECIAL = "not a regular file ({kind})"
LANDED_UNLISTABLE = "folder cannot be listed ({reason}); its contents are not read"
LANDED_UNINSPECTABLE = "entry cannot be inspected ({reason})"
LANDED_NOT_UTF8 = "file name is not valid UTF-8; not read, rename the file"
LANDED_ALIASING_KEY = (
    "key has an empty, '.' or '..' path segment; not read, it would alias another path"
)
LANDED_VERSION_KEY = (
    "key contains '?versionId=', which s3fs parses as an object version of the key before it;"
    " it cannot be read by name, rename the object"
)


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

    def path_of(self, uri: str) -> str:
        """The filesystem path of a URI that ``uri`` made (``file:///a/b`` -> ``/a/b``)."""
        return fsspec.core.strip_protocol(uri)

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
        """List every entry under the partition's landing folder, subfolders included.

        Every entry gets one ``LandedFile``; one that must not be read carries an ``error`` (a
        ``LANDED_*`` reason) and becomes a ``failed`` row, so one odd entry never fails the
        partition. Names with a segment starting with ``.`` (``.DS_Store``, partial uploads)
        are skipped; the segments ``.`` and ``..`` themselves are not hidden names.

        Local roots are walked with ``os.scandir`` and ``lstat``, never following links into
        folders: regular files are read; a folder that cannot be listed gets an error row in
        place of its contents; a symbolic link to a regular file inside the landing folder is
        read through its resolved target, any other link (dangling, a loop, outside the landing
        folder, to a folder or a non-regular file) gets an error; FIFOs, sockets and devices get
        an error without being opened; a name that is not valid UTF-8 gets an error, its bad
        bytes shown as backslash escapes.

        Object stores are listed with one ``find``; relative paths are the keys less the folder's
        exact prefix, never normalized. Folder markers (keys ending in ``/``, 0 bytes) are
        ignored; a key with an empty, ``.`` or ``..`` segment (it would alias another path) or
        containing ``?versionId=`` (s3fs would read an object version) gets an error; every
        other key is read, whatever its characters.

        Args:
            partition_key: The daily partition, ``YYYY-MM-DD``.

        Returns:
            Entries sorted by relative path; empty when the folder does not exist.

        Raises:
            OSError: When the partition's landing folder itself cannot be listed (storage
                errors are left to the step's retry policy).
        """
        base = self.raw_dir(partition_key)
        if self.is_local:
            if not os.path.isdir(base):
                return []
            found = _walk_local(base, os.path.realpath(base))
        else:
            if not self.fs.exists(base):
                return []
            found = _list_object_store(self.fs.find(base, detail=True), base)
        return sorted(found, key=lambda f: f.relative_path)

    def landing_folder_names(self) -> list[str]:
        """Names of the entries directly under ``raw/`` (folders, or stray files), sorted."""
        raw = self.path("raw")
        if not self.fs.isdir(raw):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(raw, detail=False))

    def listing_fingerprint(self, partition_key: str) -> str | None:
        """Fingerprint of the partition's landing folder listing, without reading any file.

        Over ``list_landed``'s entries, so it follows the same rules: each entry contributes
        its relative path, size and ``version`` (the ETag on object stores, a replaced object
        gets a new one; else the modification time). Hidden names and folder markers are left
        out, so a partial upload (``.name.part``) changes nothing. Any file landed, deleted or
        replaced (other size or modification time) changes it.

        Args:
            partition_key: The daily partition, ``YYYY-MM-DD``.

        Returns:
            32 hex characters (``EMPTY_LISTING_FINGERPRINT`` for an existing empty folder), or
            ``None`` when the folder does not exist.
        """
        if not self.fs.isdir(self.raw_dir(partition_key)):
            return None
        entries = [
            (f.relative_path, f.size_bytes, f.version) for f in self.list_landed(partition_key)
        ]
        return _fingerprint(entries)

    def missing_bucket(self) -> str:
        """The root's bucket when the object store says it does not exist, else ``""``.

        Tells a mistyped root or endpoint apart from a missing folder in error messages. Local
        roots, existing buckets and buckets that cannot be checked (no right to list them, no
        network) give ``""``.
        """
        if self.is_local:
            return ""
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.invalidate_cache(bucket)
            self.fs.ls(bucket, detail=False)
        except FileNotFoundError:
            return bucket
        except Exception:  # only a hint for a message: the caller fails anyway
            return ""
        return ""

    def makedirs(self, path: str) -> None:
        """Create a local folder and its parents; nothing on object stores.

        A key's PUT needs no folder, and s3fs's ``makedirs`` may try to create the bucket when
        its HeadBucket fails (docs/ARCHITECTURE.md, "core/storage.py").
        """
        if self.is_local:
            self.fs.makedirs(path, exist_ok=True)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write a file so readers see the old content or the new, never a part.

        Local: write a hidden temporary file beside it, then ``os.replace`` (atomic on POSIX).
        Object stores: one PUT, which S3 and GCS make visible atomically (s3fs sends up to
        100 MiB as one PutObject, more as a multipart upload, also visible only once complete).

        Raises:
            OSError: The write failed (a full disk, an S3 error); the message names the target
                even where the operating system's does not (``ENOSPC`` on ``write``).
        """
        try:
            self._write_bytes_atomic(path, data)
        except OSError as error:
            raise with_path(error, self.uri(path)) from error

    def _write_bytes_atomic(self, path: str, data: bytes) -> None:
        self.makedirs(posixpath.dirname(path))
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

    def read_parquet(self, path: str) -> pa.Table:
        """Read one Parquet file (raises ``FileNotFoundError`` when it is missing)."""
        with self.fs.open(path, "rb") as handle:
            return pq.read_table(handle)

    def replace_partition(
        self, table: str, partition_key: str, data: pa.Table, area: str = "tables"
    ) -> str:
        """Replace a table's partition with ``data``, atomically; returns the file's URI.

        The partition is always the single file ``part-0.parquet``.
        """
        target = posixpath.join(self.table_dir(table, partition_key, area), PARTITION_FILE)
        self.write_parquet(target, data)
        return self.uri(target)

    def read_partition(self, table: str, partition_key: str, area: str = "tables") -> pa.Table:
        """Read a table's partition (raises ``FileNotFoundError`` when never written)."""
        directory = self.table_dir(table, partition_key, area)
        return self.read_parquet(posixpath.join(directory, PARTITION_FILE))


_VERSION_FIELDS = ("ETag", "etag", "generation", "mtime", "LastModified", "updated")
"""Object-store listing fields naming an object's version, first present wins: the ETag (S3,
GCS, Azure), GCS's generation, else a modification time (``LandedFile.version``)."""


def with_path(error: OSError, uri: str) -> OSError:
    """``error`` itself when it names a file, else the same kind of error naming ``uri``.

    ``write`` and ``fsync`` errors (``ENOSPC``: no space left on device) carry no file name,
    so the run log would not say which disk or object is at fault.
    """
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror or str(error), uri)


def _fingerprint(entries: list[tuple[str, int, str]]) -> str:
    """32 hex characters of SHA-256 over a sorted ``(relative path, size, version)`` list."""
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


EMPTY_LISTING_FINGERPRINT = _fingerprint([])
"""``Storage.listing_fingerprint`` of an existing landing folder with nothing in it."""


def _is_hidden(relative_path: str) -> bool:
    """Whether a segment of ``relative_path`` is a hidden name (``.`` and ``..`` are not)."""
    return any(
        part.startswith(".") and part not in (".", "..") for part in relative_path.split("/")
    )


def _file_kind(mode: int) -> str:
    """Name of a non-regular, non-folder file type for error messages."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"file type {stat.S_IFMT(mode):o}"


def _reason(error: OSError) -> str:
    """Short text of an ``OSError`` without the path (``PermissionError: Permission denied``)."""
    return f"{type(error).__name__}: {error.strerror or error}"


def _printable(path: str) -> str:
    """``path`` with undecodable bytes (surrogate escapes) shown as backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _classify_link(path: str, landing_root: str) -> tuple[str, int, str, str]:
    """Resolve a symbolic link: ``(path to read, size in bytes, error, version)``."""
    try:
        target_stat = os.stat(path)
    except FileNotFoundError:
        return path, 0, LANDED_BROKEN_LINK.format(target=_printable(os.readlink(path))), ""
    except OSError as error:
        if error.errno == errno.ELOOP:
            return path, 0, LANDED_LINK_LOOP, ""
        return path, 0, LANDED_LINK_UNRESOLVED.format(reason=_reason(error)), ""
    target = os.path.realpath(path)
    if os.path.commonpath([landing_root, target]) != landing_root:
        return path, 0, LANDED_LINK_OUTSIDE, ""
    if stat.S_ISDIR(target_stat.st_mode):
        return path, 0, LANDED_LINK_TO_FOLDER, ""
    if not stat.S_ISREG(target_stat.st_mode):
        return path, 0, LANDED_LINK_TO_SPECIAL.format(kind=_file_kind(target_stat.st_mode)), ""
    return target, target_stat.st_size, "", str(target_stat.st_mtime_ns)


def _walk_local(base: str, landing_root: str) -> list[LandedFile]:
    """Classify every entry below ``base`` (see ``Storage.list_landed``), never following links.

    Raises:
        OSError: When ``base`` itself cannot be listed.
    """
    found = []
    folders = [(base, "")]
    while folders:
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as entries:
                entries = list(entries)
        except OSError as error:
            if folder == base:
                raise
            reason = LANDED_UNLISTABLE.format(reason=_reason(error))
            found.append(LandedFile(_printable(folder), _printable(prefix), 0, reason))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = f"{prefix}/{entry.name}" if prefix else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    folders.append((entry.path, relative))
                    continue
                if _printable(relative) != relative:
                    found.append(
                        LandedFile(_printable(entry.path), _printable(relative), 0, LANDED_NOT_UTF8)
                    )
                elif stat.S_ISREG(mode):
                    info = entry.stat(follow_symlinks=False)
                    version = str(info.st_mtime_ns)
                    found.append(LandedFile(entry.path, relative, info.st_size, "", version))
                elif stat.S_ISLNK(mode):
                    path, size, error, version = _classify_link(entry.path, landing_root)
                    found.append(LandedFile(path, relative, size, error, version))
                else:
                    error = LANDED_SPECIAL.format(kind=_file_kind(mode))
                    found.append(LandedFile(entry.path, relative, 0, error))
            except OSError as error:
                reason = LANDED_UNINSPECTABLE.format(reason=_reason(error))
                found.append(LandedFile(_printable(entry.path), _printable(relative), 0, reason))
    return found


def _list_object_store(listing: dict[str, dict], base: str) -> list[LandedFile]:
    """Classify a ``find(base, detail=True)`` listing (see ``Storage.list_landed``)."""
    prefix = base.rstrip("/") + "/"
    found = []
    for path, info in listing.items():
        if info.get("type") == "directory" or not path.startswith(prefix):
            continue  # a folder, or the key ``base`` itself (not below the folder)
        relative = path[len(prefix) :]
        size = int(info.get("size") or 0)
        if relative == "" or (relative.endswith("/") and size == 0):
            continue  # folder marker
        if _is_hidden(relative):
            continue
        error = ""
        if any(part in ("", ".", "..") for part in relative.split("/")):
            error = LANDED_ALIASING_KEY
        elif "?versionId=" in relative:
            error = LANDED_VERSION_KEY
        version = next((info[k] for k in _VERSION_FIELDS if info.get(k) not in (None, "")), "")
        found.append(LandedFile(path, relative, size, error, str(version)))
    return found

"""The staging area: shard manifests, shards written in parts, results, clean-up.

Steps pass each other small manifests (``ShardPlan``, ``TranscriptionGroup``, ``ShardFeatures``,
``GroupTranscripts``). A preprocessing step writes its shard in
``staging/YYYY-MM-DD/<run id>/shard-NNNNN/`` as it goes, in parts committed about every second
(``ShardWriter``): ``try-<hex>/part-NNNNN.f32`` (the part's chunks' log-mel frames, float32,
row-major ``(frames, n_mels)``, one chunk after another), ``part-NNNNN.files.parquet``
(``SHARD_FILES``: per content finished in the part, decoded duration, speech found, status,
reason, chunk count) and ``part-NNNNN.chunks.parquet`` (``SHARD_CHUNKS``: where each chunk's
frames are, its speech regions; written last, the part's commit mark). A finished shard also has
``chunks.parquet`` and, written last, ``files.parquet``. Transcription steps read the parts while
they are written (``core.streaming``). Each content's result is one JSON object in the cache, or
in the run's folder when it failed; folders of runs that are gone are removed
(``remove_stale_runs``).
"""

import os
import posixpath
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from whisper_pipeline.core.chunking import N_FRAMES, SpeechChunk
from whisper_pipeline.core.preprocess import PreprocessedFile
from whisper_pipeline.core.results import ContentResult
from whisper_pipeline.core.schema import STATUS_FAILED
from whisper_pipeline.core.storage import Storage

SHARD_FILES = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("speech_duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("chunks", pa.int32()),
    ]
)
SHARD_CHUNKS = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("part", pa.string()),
        ("frame_offset", pa.int64()),
        ("n_frames", pa.int32()),
        ("speech_starts", pa.list_(pa.int64())),
        ("speech_ends", pa.list_(pa.int64())),
    ]
)

CHUNKS_FILE = "chunks.parquet"
FILES_FILE = "files.parquet"
PART_FEATURES = ".f32"
PART_CHUNKS = ".chunks.parquet"
PART_FILES = ".files.parquet"
"""Suffixes of a part's three files: ``part-NNNNN.f32`` (its chunks' frames), then
``part-NNNNN.files.parquet`` and, last, ``part-NNNNN.chunks.parquet`` (its commit mark)."""

PART_FRAMES = 64 * N_FRAMES
"""Feature frames after which a part is committed: 64 full 30 s windows, 61 MiB of float32
features at 80 mel bins (one object per part on S3)."""

PART_AGE_S = 1.0
"""Seconds after which a part is committed at its next chunk or file outcome, so a transcription
step reading the shard while it is preprocessed waits about this long for new chunks
(issue 29: the first batch within 5 s of the first preprocessing step)."""

RESULT_THREADS = 8
"""Result files read or written at once (small objects; I/O-bound on object stores)."""


@dataclass(frozen=True)
class ShardPlan:
    """Files (distinct contents) one preprocessing step handles; passed between steps, small.

    Attributes:
        index: Shard number, from 0.
        run_dir: Staging folder of this run and partition.
        options_key: Cache key of the model and decoding options (``core.results.ModelSpec``).
        files: ``(content_sha256, path, declared duration_s or None)``, one per distinct content.
    """

    index: int
    run_dir: str
    options_key: str
    files: tuple[tuple[str, str, float | None], ...]

    @property
    def shard_dir(self) -> str:
        """This shard's staging folder."""
        return posixpath.join(self.run_dir, f"shard-{self.index:05d}")


@dataclass(frozen=True)
class ShardFeatures:
    """Where a preprocessed shard's chunk features are (features never travel through Dagster).

    Attributes:
        plan: The shard.
        n_mels: Mel bins per feature frame.
        audio_s: Decoded audio in seconds.
        preprocess_s: Wall seconds the step spent decoding, VAD-splitting and featurizing.
        peak_rss_mib: The step process's peak resident set size, MiB (``metrics.peak_rss_mib``).
    """

    plan: ShardPlan
    n_mels: int
    audio_s: float
    preprocess_s: float
    peak_rss_mib: float


@dataclass(frozen=True)
class TranscriptionGroup:
    """Shards one transcription step reads as they are preprocessed; passed between steps.

    Attributes:
        index: Group number, from 0.
        run_dir: Staging folder of this run and partition.
        options_key: Cache key of the model and decoding options (``core.results.ModelSpec``).
        shards: The shards, each preprocessed by its own step.
        redo: Transcribe contents with a cached result too (``plan_shards``' ``redo``).
    """

    index: int
    run_dir: str
    options_key: str
    shards: tuple[ShardPlan, ...]
    redo: bool = False


@dataclass(frozen=True)
class GroupTranscripts:
    """Summary of a transcribed group; its results are per content in the result cache.

    Attributes:
        group: The group it transcribed.
        audio_s: Decoded audio of the files transcribed, seconds.
        transcribe_s: Wall seconds from the model loaded to the last result (waiting for
            preprocessing included).
        model_load_s: Seconds spent loading the model in this step.
        generate_calls: CTranslate2 ``generate`` calls made (fallbacks and seeks included).
        peak_rss_mib: The step process's peak resident set size, MiB (``metrics.peak_rss_mib``).
        align_s: Seconds of word alignment inside ``transcribe_s`` (summed over the workers'
            calls, so it may exceed the wall time it took with several workers).
        busy_s: Seconds with at least one batch in the model (``core.scheduler.Scheduler``).
        first_batch_s: Seconds from the step's start to its first batch reaching the model;
            ``None`` when no chunk was transcribed.
    """

    group: TranscriptionGroup
    audio_s: float
    transcribe_s: float
    model_load_s: float
    generate_calls: int
    peak_rss_mib: float
    align_s: float = 0.0
    busy_s: float = 0.0
    first_batch_s: float | None = None


class ShardWriter:
    """Writes a shard's staging files while its files are preprocessed, in parts.

    A context manager. Chunks' features stream to the current part's features file as they
    arrive (``add_chunk``, the ``on_chunk`` sink of ``core.preprocess.preprocess_file``); a part
    is committed (``flush``) once it holds ``part_frames`` frames, or once its oldest chunk or
    file outcome has waited ``part_age_s`` seconds, so a transcription step reading the shard
    (``core.streaming.StagedChunks``) gets its first chunks within about a second of their
    preprocessing, whatever the shard's size. Parts go in a folder of this attempt
    (``try-<hex>``), so a retried step never overwrites a part a reader holds. On a clean exit
    the last part is committed, then the shard's ``chunks.parquet`` and, last,
    ``files.parquet``: a shard with ``files.parquet`` is complete. ``source_path`` and
    ``spool_path`` are local scratch files for a file's bytes and its decoded samples, removed
    on exit.

    Args:
        store: The storage holding the staging area.
        shard_dir: The shard's staging folder (``ShardPlan.shard_dir``).
        part_frames: Feature frames after which a part is committed (>= 1).
        part_age_s: Seconds after which a part is committed at the next chunk or file.
        clock: Monotonic seconds (``time.monotonic``; tests pass their own).

    Attributes:
        audio_s: Decoded audio of the files not failed, seconds.
        chunks: Chunk rows written so far (``SHARD_CHUNKS``).
        files: File rows written so far (``SHARD_FILES``).
        parts: Parts committed so far.
    """

    def __init__(
        self,
        store: Storage,
        shard_dir: str,
        part_frames: int = PART_FRAMES,
        part_age_s: float = PART_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.shard_dir = shard_dir
        self.part_frames = part_frames
        self.part_age_s = part_age_s
        self.clock = clock
        self.audio_s = 0.0
        self.chunks: list[dict] = []
        self.files: list[dict] = []
        self.parts = 0
        self.attempt_dir = posixpath.join(shard_dir, f"try-{uuid.uuid4().hex[:12]}")
        self._part_chunks: list[dict] = []
        self._part_files: list[dict] = []
        self._part_frames = 0
        self._part_since: float | None = None
        self._features = None
        self._spool_dir = None

    @property
    def spool_path(self) -> str:
        """Local scratch file for one file's decoded 16-bit PCM (reused file after file)."""
        return os.path.join(self._spool_dir.name, "audio.s16")

    @property
    def source_path(self) -> str:
        """Local scratch file for one file's bytes as landed (reused file after file)."""
        return os.path.join(self._spool_dir.name, "source")

    def __enter__(self) -> "ShardWriter":
        self.store.makedirs(self.attempt_dir)
        self._spool_dir = tempfile.TemporaryDirectory(prefix="whisper-pipeline-")
        return self

    def _part_path(self, suffix: str) -> str:
        return posixpath.join(self.attempt_dir, f"part-{self.parts:05d}{suffix}")

    def _started(self) -> None:
        if self._part_since is None:
            self._part_since = self.clock()

    def add_chunk(self, content_sha256: str, chunk: SpeechChunk, features: np.ndarray) -> None:
        """Append one chunk's log-mel ``features``, shape ``(n_mels, n_frames)``."""
        if self._features is None:
            self._features = self.store.fs.open(self._part_path(PART_FEATURES), "wb")
        self._started()
        self._features.write(np.ascontiguousarray(features.T, dtype=np.float32).tobytes())
        row = {
            "content_sha256": content_sha256,
            "chunk_index": chunk.index,
            "part": posixpath.relpath(self._part_path(PART_FEATURES), self.shard_dir),
            "frame_offset": self._part_frames,
            "n_frames": features.shape[1],
            "speech_starts": list(chunk.speech_starts),
            "speech_ends": list(chunk.speech_ends),
        }
        self._part_chunks.append(row)
        self.chunks.append(row)
        self._part_frames += features.shape[1]
        self._maybe_flush()

    def add_file(self, content_sha256: str, outcome: PreprocessedFile) -> None:
        """Record one file's outcome after its chunks (``core.preprocess.preprocess_file``)."""
        self._started()
        if outcome.status != STATUS_FAILED:
            self.audio_s += outcome.duration_s
        row = {
            "content_sha256": content_sha256,
            "duration_s": outcome.duration_s,
            "speech_duration_s": outcome.speech_s,
            "status": outcome.status,
            "error": outcome.error,
            "chunks": outcome.chunks,
        }
        self._part_files.append(row)
        self.files.append(row)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._part_frames >= self.part_frames or (
            self._part_since is not None and self.clock() - self._part_since >= self.part_age_s
        ):
            self.flush()

    def flush(self) -> None:
        """Commit the current part, if it holds anything.

        Its features file is closed, then its file rows and, last, its chunk rows (the part's
        commit mark) are written, each atomically.
        """
        if not self._part_chunks and not self._part_files:
            return
        if self._features is not None:
            self._features.close()
            self._features = None
        self.store.write_parquet(
            self._part_path(PART_FILES), pa.Table.from_pylist(self._part_files, schema=SHARD_FILES)
        )
        self.store.write_parquet(
            self._part_path(PART_CHUNKS),
            pa.Table.from_pylist(self._part_chunks, schema=SHARD_CHUNKS),
        )
        self.parts += 1
        self._part_chunks, self._part_files = [], []
        self._part_frames = 0
        self._part_since = None

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if self._features is not None:
                self._features.close()
        finally:
            self._spool_dir.cleanup()
        if exc_type is not None:
            return
        self._features = None
        self.flush()
        self.store.write_parquet(
            posixpath.join(self.shard_dir, CHUNKS_FILE),
            pa.Table.from_pylist(self.chunks, schema=SHARD_CHUNKS),
        )
        self.store.write_parquet(
            posixpath.join(self.shard_dir, FILES_FILE),
            pa.Table.from_pylist(self.files, schema=SHARD_FILES),
        )


def failure_path(run_dir: str, content_sha256: str) -> str:
    """Where a run keeps a failed content's result (never cached, so re-runs retry it)."""
    return posixpath.join(run_dir, "failed", f"{content_sha256}.json")


def write_results(
    store: Storage, run_dir: str, options_key: str, results: Iterable[ContentResult]
) -> None:
    """Store contents' results: in the cache when they succeeded, run-local when they failed.

    Each is one small JSON object written atomically (``Storage.write_bytes_atomic``),
    ``RESULT_THREADS`` at a time.
    """

    def write(result: ContentResult) -> None:
        if result.status == STATUS_FAILED:
            path = failure_path(run_dir, result.content_sha256)
        else:
            path = store.result_path(options_key, result.content_sha256)
        store.write_bytes_atomic(path, result.to_json())

    with ThreadPoolExecutor(RESULT_THREADS) as pool:
        list(pool.map(write, results))


def read_results(
    store: Storage, run_dir: str, options_key: str, contents: Iterable[str]
) -> dict[str, ContentResult]:
    """Each content's result: this run's failure, else its cached result; absent when neither.

    Args:
        store: The storage root.
        run_dir: The run's staging folder (``Storage.staging_dir``).
        options_key: Cache key of the model and options (``ModelSpec.cache_key``).
        contents: SHA-256 hex digests.

    Returns:
        Results by content SHA-256.
    """

    def read(sha: str) -> ContentResult | None:
        for path in (failure_path(run_dir, sha), store.result_path(options_key, sha)):
            try:
                return ContentResult.from_json(store.fs.cat_file(path))
            except FileNotFoundError:
                continue
        return None

    contents = list(contents)
    with ThreadPoolExecutor(RESULT_THREADS) as pool:
        found = list(pool.map(read, contents))
    return {sha: result for sha, result in zip(contents, found, strict=True) if result}


STAGING_MAX_AGE_S = 24 * 3600.0
"""Staging folders of runs the instance does not record (deleted runs, another instance) are
removed once their newest file is older than this."""


RUN_ACTIVE, RUN_ENDED, RUN_UNKNOWN = "active", "ended", "unknown"
"""What ``remove_stale_runs`` needs to know of a run: queued/starting/running, ended (success,
failure, canceled), or not recorded by the instance at all."""


def remove_stale_runs(
    store: Storage,
    run_state: Callable[[str], str],
    keep: str = "",
    max_age_s: float = STAGING_MAX_AGE_S,
    now: float | None = None,
) -> list[str]:
    """Remove the staging folders of runs that can no longer use them.

    A run's folder ``staging/YYYY-MM-DD/<run id>/`` is removed when the run has ended
    (``RUN_ENDED``: failed, canceled, or succeeded without cleaning up), or when the instance does
    not know the run (``RUN_UNKNOWN``) and the folder's newest file is older than ``max_age_s``.
    Folders of active runs are kept. A successful run removes its own folder when it publishes;
    this catches the rest. A killed run is ``RUN_ACTIVE`` until ``dead_run_sensor`` marks it
    failed, so its folder goes at the first run after that.

    Args:
        store: The storage root.
        run_state: ``RUN_ACTIVE``, ``RUN_ENDED`` or ``RUN_UNKNOWN`` for a run id.
        keep: A run id never to remove (the calling run's).
        max_age_s: Least age in seconds of an unknown run's folder that is removed.
        now: Epoch seconds taken as the current time (default: ``time.time()``).

    Returns:
        The folders removed.
    """
    now = time.time() if now is None else now
    base = store.path("staging")
    if not store.fs.exists(base):
        return []
    removed = []
    for date_dir in store.fs.ls(base, detail=False):
        name = posixpath.basename(date_dir.rstrip("/"))
        # Only run folders live under a date; the staged manifest lives under its asset name.
        if len(name) != 10 or name[4] != "-" or not store.fs.isdir(date_dir):
            continue
        for run_dir in store.fs.ls(date_dir, detail=False):
            run_id = posixpath.basename(run_dir.rstrip("/"))
            if run_id == keep:
                continue
            state = run_state(run_id)
            if state == RUN_ACTIVE:
                continue
            if state != RUN_ENDED and now - _newest_mtime(store, run_dir, now) < max_age_s:
                continue
            remove_run_dir(store, run_dir)
            removed.append(run_dir)
    return removed


def remove_run_dir(store: Storage, run_dir: str) -> None:
    """Remove a run's staging folder, and its partition's folder if that is left empty.

    Object stores have no empty folders; on a local root the date folder is removed only when
    empty (``rmdir`` refuses otherwise, so another run's folder is never touched).
    """
    if store.fs.exists(run_dir):
        store.fs.rm(run_dir, recursive=True)
    if store.is_local:
        try:
            os.rmdir(posixpath.dirname(run_dir.rstrip("/")))
        except OSError:  # not empty (another run of the partition), or already gone
            pass


def _newest_mtime(store: Storage, directory: str, default: float) -> float:
    """Newest modification time (epoch seconds) of the files under ``directory`` (or its own)."""
    newest = None
    infos = list(store.fs.find(directory, detail=True).values()) or [store.fs.info(directory)]
    for info in infos:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        if mtime is None:
            continue
        seconds = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
        newest = seconds if newest is None else max(newest, seconds)
    return default if newest is None else newest

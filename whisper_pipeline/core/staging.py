"""The staging area: shard manifests, shards written and read back, results, clean-up.

Steps pass each other small manifests (``ShardPlan``, ``ShardFeatures``, ``ShardTranscripts``).
A preprocessed shard is three files in ``staging/YYYY-MM-DD/<run id>/shard-NNNNN/``:
``features.f32`` (every chunk's log-mel frames, float32, row-major ``(frames, n_mels)``, chunks
one after another), ``chunks.parquet`` (``SHARD_CHUNKS``: where each chunk's frames are, its
speech regions) and ``files.parquet`` (``SHARD_FILES``: per content, decoded duration, speech
found, status and reason). Each content's result is one JSON object in the cache, or in the
run's folder when it failed; folders of runs that are gone are removed (``remove_stale_runs``).
"""

import os
import posixpath
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from whisper_pipeline.core.chunking import SpeechChunk
from whisper_pipeline.core.preprocess import PreprocessedFile
from whisper_pipeline.core.results import ContentResult
from whisper_pipeline.core.schema import STATUS_FAILED
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.core.types import ChunkInput

SHARD_FILES = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("speech_duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
SHARD_CHUNKS = pa.schema(
    [
        ("content_sha256", pa.string()),
        ("chunk_index", pa.int32()),
        ("frame_offset", pa.int64()),
        ("n_frames", pa.int32()),
        ("speech_starts", pa.list_(pa.int64())),
        ("speech_ends", pa.list_(pa.int64())),
    ]
)

FEATURES_FILE = "features.f32"
CHUNKS_FILE = "chunks.parquet"
FILES_FILE = "files.parquet"

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
class ShardTranscripts:
    """Summary of a transcribed shard; its results are per content in the result cache.

    Attributes:
        features: The preprocessed shard it came from.
        transcribe_s: Wall seconds of batched decoding (model load excluded).
        model_load_s: Seconds spent loading the model in this step.
        generate_calls: CTranslate2 ``generate`` calls made (fallbacks and seeks included).
        peak_rss_mib: The step process's peak resident set size, MiB (``metrics.peak_rss_mib``).
        align_s: Seconds of word alignment inside ``transcribe_s`` (summed over the workers'
            calls, so it may exceed the wall time it took with several workers).
    """

    features: ShardFeatures
    transcribe_s: float
    model_load_s: float
    generate_calls: int
    peak_rss_mib: float
    align_s: float = 0.0


class ShardWriter:
    """Writes a shard's three staging files while its files are preprocessed, one at a time.

    A context manager: features stream to ``features.f32`` as chunks arrive (``add_chunk``,
    the ``on_chunk`` sink of ``core.preprocess.preprocess_file``); ``chunks.parquet`` and
    ``files.parquet`` are written on a clean exit, each atomically, so a shard with both
    manifests is complete. ``source_path`` and ``spool_path`` are local scratch files for a
    file's bytes and its decoded samples, removed on exit.

    Args:
        store: The storage holding the staging area.
        shard_dir: The shard's staging folder (``ShardPlan.shard_dir``).

    Attributes:
        audio_s: Decoded audio of the files not failed, seconds.
        chunks: Chunk rows written so far (``SHARD_CHUNKS``).
        files: File rows written so far (``SHARD_FILES``).
    """

    def __init__(self, store: Storage, shard_dir: str):
        self.store = store
        self.shard_dir = shard_dir
        self.audio_s = 0.0
        self.chunks: list[dict] = []
        self.files: list[dict] = []
        self._frame_offset = 0
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
        self.store.makedirs(self.shard_dir)
        self._spool_dir = tempfile.TemporaryDirectory(prefix="whisper-pipeline-")
        features_path = posixpath.join(self.shard_dir, FEATURES_FILE)
        self._features = self.store.fs.open(features_path, "wb")
        return self

    def add_chunk(self, content_sha256: str, chunk: SpeechChunk, features: np.ndarray) -> None:
        """Append one chunk's log-mel ``features``, shape ``(n_mels, n_frames)``."""
        self._features.write(np.ascontiguousarray(features.T, dtype=np.float32).tobytes())
        self.chunks.append(
            {
                "content_sha256": content_sha256,
                "chunk_index": chunk.index,
                "frame_offset": self._frame_offset,
                "n_frames": features.shape[1],
                "speech_starts": list(chunk.speech_starts),
                "speech_ends": list(chunk.speech_ends),
            }
        )
        self._frame_offset += features.shape[1]

    def add_file(self, content_sha256: str, outcome: PreprocessedFile) -> None:
        """Record one file's outcome after its chunks (``core.preprocess.preprocess_file``)."""
        if outcome.status != STATUS_FAILED:
            self.audio_s += outcome.duration_s
        self.files.append(
            {
                "content_sha256": content_sha256,
                "duration_s": outcome.duration_s,
                "speech_duration_s": outcome.speech_s,
                "status": outcome.status,
                "error": outcome.error,
            }
        )

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self._features.close()
        finally:
            self._spool_dir.cleanup()
        if exc_type is not None:
            return
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


def read_chunk_rows(store: Storage, shard_dir: str) -> list[dict]:
    """The ``chunks.parquet`` rows of a preprocessed shard, in staging order.

    Raises:
        FileNotFoundError: The shard was never preprocessed.
    """
    return store.read_parquet(posixpath.join(shard_dir, CHUNKS_FILE)).to_pylist()


def chunk_waves(
    store: Storage, shard_dir: str, n_mels: int, wave_frames: int, local_dir: str
) -> Iterator[list[ChunkInput]]:
    """Read a preprocessed shard back as model inputs, about ``wave_frames`` frames at a time.

    Chunks come longest first (so a wave's batches hold chunks of similar length) and are keyed
    ``(content_sha256, chunk_index)``. A wave holds the next chunks whose frames add up to at
    most ``wave_frames`` (a longer chunk makes a wave of its own). Each wave memory-maps the
    features file afresh and drops the map when the caller moves on, so the feature pages kept
    resident are bounded by the wave, not the shard. A remote features file is downloaded into
    ``local_dir`` first.

    Args:
        store: The storage holding the shard.
        shard_dir: The shard's staging folder.
        n_mels: Mel bins per frame (80; 128 for large-v3).
        wave_frames: Feature frames per wave (>= 1; 100 frames are 1 s of audio).
        local_dir: A local scratch folder that outlives the iteration.

    Yields:
        Non-empty lists of ``ChunkInput`` with ``features`` of shape ``(n_mels, n_frames)``,
        float32 (read-only views of the map).

    Raises:
        ValueError: ``wave_frames`` is not positive.
    """
    if wave_frames < 1:
        raise ValueError(f"wave_frames must be positive, got {wave_frames}")
    rows = sorted(read_chunk_rows(store, shard_dir), key=lambda r: -r["n_frames"])
    if not rows:
        return
    features_path = posixpath.join(shard_dir, FEATURES_FILE)
    if not store.is_local:
        local_path = os.path.join(local_dir, FEATURES_FILE)
        store.fs.get_file(features_path, local_path)
        features_path = local_path
    waves: list[list[dict]] = [[]]
    held = 0
    for row in rows:
        if waves[-1] and held + row["n_frames"] > wave_frames:
            waves.append([])
            held = 0
        waves[-1].append(row)
        held += row["n_frames"]
    for wave in waves:
        frames = np.memmap(features_path, dtype=np.float32, mode="r").reshape(-1, n_mels)
        yield [
            ChunkInput(
                key=(row["content_sha256"], row["chunk_index"]),
                features=frames[row["frame_offset"] : row["frame_offset"] + row["n_frames"]].T,
                speech_starts=tuple(row["speech_starts"]),
                speech_ends=tuple(row["speech_ends"]),
            )
            for row in wave
        ]
        del frames


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

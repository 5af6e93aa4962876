"""The staging area: one run's preprocessed shards, read back in bounded waves, and its clean-up.

A preprocessed shard is three files in ``staging/YYYY-MM-DD/<run id>/shard-NNNNN/``:

- ``features.f32``: every chunk's log-mel frames, float32, row-major ``(frames, n_mels)``,
  chunks one after another;
- ``chunks.parquet`` (``SHARD_CHUNKS``): where each chunk's frames are, and its speech regions;
- ``files.parquet`` (``SHARD_FILES``): per distinct content, the decoded duration, the speech
  found, and ``failed``/``no_speech`` with a reason.
"""

import os
import posixpath
import time
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from whisper_pipeline.core.batching import ChunkInput
from whisper_pipeline.core.storage import Storage

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
    store: Storage, shard_dir: str, n_mels: int, wave_size: int, local_dir: str
) -> Iterator[list[ChunkInput]]:
    """Read a preprocessed shard back as model inputs, ``wave_size`` chunks at a time.

    Chunks come longest first (so the batches of a wave hold chunks of similar length) and are
    keyed ``(content_sha256, chunk_index)``. Each wave memory-maps the features file afresh and
    drops the map when the caller moves on, so the feature pages a step keeps resident are
    bounded by the wave, not by the shard (a mapped page stays in the process's RSS until it is
    unmapped). A remote features file is downloaded into ``local_dir`` first.

    Args:
        store: The storage holding the shard.
        shard_dir: The shard's staging folder.
        n_mels: Mel bins per frame (80; 128 for large-v3).
        wave_size: Chunks per wave (>= 1).
        local_dir: A local scratch folder that outlives the iteration.

    Yields:
        Lists of at most ``wave_size`` ``ChunkInput`` with ``features`` of shape
        ``(n_mels, n_frames)``, float32 (read-only views of the map).

    Raises:
        ValueError: ``wave_size`` is not positive.
    """
    if wave_size < 1:
        raise ValueError(f"wave_size must be positive, got {wave_size}")
    rows = sorted(read_chunk_rows(store, shard_dir), key=lambda r: -r["n_frames"])
    if not rows:
        return
    features_path = posixpath.join(shard_dir, FEATURES_FILE)
    if not store.is_local:
        local_path = os.path.join(local_dir, FEATURES_FILE)
        store.fs.get_file(features_path, local_path)
        features_path = local_path
    for start in range(0, len(rows), wave_size):
        frames = np.memmap(features_path, dtype=np.float32, mode="r").reshape(-1, n_mels)
        yield [
            ChunkInput(
                key=(row["content_sha256"], row["chunk_index"]),
                features=frames[row["frame_offset"] : row["frame_offset"] + row["n_frames"]].T,
                speech_starts=tuple(row["speech_starts"]),
                speech_ends=tuple(row["speech_ends"]),
            )
            for row in rows[start : start + wave_size]
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
            store.fs.rm(run_dir, recursive=True)
            removed.append(run_dir)
    return removed


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

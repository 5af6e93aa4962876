"""Shards read back as model inputs while their preprocessing steps still write them.

A transcription step starts with its group's preprocessing steps, not after them: it polls each
shard's staging folder for committed parts (``core.staging.ShardWriter``) and hands their chunks
to the model as waves, so decoding overlaps preprocessing and the first batch reaches the model
about a part's age (``core.staging.PART_AGE_S``) after the first chunk is featurized. A shard is
done once its ``files.parquet`` exists; one whose step failed for good is given up.
"""

import os
import posixpath
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial

import numpy as np

from whisper_pipeline.core.results import assemble
from whisper_pipeline.core.schema import STATUS_FAILED
from whisper_pipeline.core.staging import (
    FILES_FILE,
    PART_CHUNKS,
    PART_FILES,
    write_results,
)
from whisper_pipeline.core.storage import Storage
from whisper_pipeline.core.types import ChunkInput, ChunkResult

POLL_S = 0.25
"""Least seconds between two listings of the shards' folders (one LIST request per shard on an
object store)."""

FAILURE_POLL_S = 2.0
"""Least seconds between two questions to ``failed_shards`` (a query of the run's event log)."""


class StagedChunks:
    """The chunks of some shards, as waves of model inputs, read while the shards are written.

    Iterating ``waves()`` yields each chunk of every shard exactly once (a chunk a retried
    preprocessing step staged again is skipped), the chunks on hand longest first, at most
    ``wave_frames`` frames a wave; it yields an empty list when nothing new is staged yet (the
    consumer waits and asks again), and ends once every shard is done or given up. Features are
    read-only float32 views of memory-mapped part files, shape ``(n_mels, n_frames)``; parts on
    an object store are downloaded into ``local_dir`` first.

    Args:
        store: The storage holding the shards.
        shard_dirs: The shards' staging folders (``ShardPlan.shard_dir``), by shard index.
        n_mels: Mel bins per frame (80; 128 for large-v3).
        wave_frames: Feature frames per wave (>= 1; 100 frames are 1 s of audio).
        local_dir: A local scratch folder that outlives the iteration.
        skip: Contents whose chunks are not yielded (their result is already cached).
        failed_shards: Returns the indices of shards whose preprocessing failed for good
            (asked at most every ``FAILURE_POLL_S``); such a shard is given up once nothing
            new of it is staged.
        clock: Monotonic seconds (``time.monotonic``).

    Attributes:
        files: ``SHARD_FILES`` rows by content, of the files whose preprocessing finished.
        frames: Feature frames per chunk key yielded.
        given_up: Indices of shards given up (their step failed).

    Raises:
        ValueError: ``wave_frames`` is not positive.
    """

    def __init__(
        self,
        store: Storage,
        shard_dirs: dict[int, str],
        n_mels: int,
        wave_frames: int,
        local_dir: str,
        skip: Iterable[str] = (),
        failed_shards: Callable[[], set[int]] = set,
        clock: Callable[[], float] = time.monotonic,
    ):
        if wave_frames < 1:
            raise ValueError(f"wave_frames must be positive, got {wave_frames}")
        self.store = store
        self.shard_dirs = dict(shard_dirs)
        self.n_mels = n_mels
        self.wave_frames = wave_frames
        self.local_dir = local_dir
        self.skip = set(skip)
        self.failed_shards = failed_shards
        self.clock = clock
        self.files: dict[str, dict] = {}
        self.frames: dict[tuple[str, int], int] = {}
        self.given_up: set[int] = set()
        self._pending = set(self.shard_dirs)
        self._read_parts: set[str] = set()
        self._waiting: list[tuple[str, dict]] = []
        self._downloaded: dict[str, str] = {}
        self._polled = -float("inf")
        self._failures_asked = -float("inf")

    @property
    def done(self) -> bool:
        """Whether every shard is done or given up and every chunk was yielded."""
        return not self._pending and not self._waiting

    def waves(self) -> Iterator[list[ChunkInput]]:
        """Waves of chunks, ``[]`` while nothing new is staged (see the class docstring)."""
        while not self.done:
            if not self._waiting:
                if self.clock() - self._polled < POLL_S:
                    yield []
                    continue
                self._poll()
                if not self._waiting:
                    if self._pending:
                        yield []
                    continue
            yield self._next_wave()

    def _next_wave(self) -> list[ChunkInput]:
        """The next chunks on hand, longest first, up to ``wave_frames`` frames.

        Each wave maps its parts afresh, so the feature pages mapped are those of the waves
        not yet done, not the whole shard's.
        """
        rows, held = [], 0
        while self._waiting:
            frames = self._waiting[0][1]["n_frames"]
            if rows and held + frames > self.wave_frames:
                break
            rows.append(self._waiting.pop(0))
            held += frames
        maps: dict[str, np.ndarray] = {}
        wave = []
        for path, row in rows:
            if path not in maps:
                maps[path] = self._features(path)
            offset = row["frame_offset"]
            wave.append(
                ChunkInput(
                    key=(row["content_sha256"], row["chunk_index"]),
                    features=maps[path][offset : offset + row["n_frames"]].T,
                    speech_starts=tuple(row["speech_starts"]),
                    speech_ends=tuple(row["speech_ends"]),
                )
            )
        return wave

    def _poll(self) -> None:
        """Read every newly committed part; mark finished shards done, failed ones given up."""
        self._polled = self.clock()
        # Other processes write the parts: listings an object store's file system cached at
        # the last poll (s3fs does) would hide them, and the shard would never finish.
        self.store.fs.invalidate_cache()
        failed = set()
        if self.clock() - self._failures_asked >= FAILURE_POLL_S:
            self._failures_asked = self.clock()
            failed = self.failed_shards() & self._pending
        new: list[tuple[str, dict]] = []
        for index in sorted(self._pending):
            shard_dir = self.shard_dirs[index]
            # Looked for before the parts are listed: once it exists, every part is committed.
            finished = self.store.fs.exists(posixpath.join(shard_dir, FILES_FILE))
            new += self._read_new_parts(shard_dir)
            if finished:
                self._pending.discard(index)
            elif index in failed:
                self._pending.discard(index)
                self.given_up.add(index)
        self._waiting += new
        self._waiting.sort(key=lambda entry: -entry[1]["n_frames"])

    def _read_new_parts(self, shard_dir: str) -> list[tuple[str, dict]]:
        """``(features path, SHARD_CHUNKS row)`` of the chunks newly committed.

        Parts committed since the last poll, less chunks already read or skipped; the parts'
        file rows join ``files``.
        """
        marks = sorted(
            path
            for path in self.store.fs.glob(posixpath.join(shard_dir, "try-*", "*" + PART_CHUNKS))
            if path not in self._read_parts
        )
        chunks = []
        for mark in marks:
            self._read_parts.add(mark)
            base = mark[: -len(PART_CHUNKS)]
            for row in self.store.read_parquet(base + PART_FILES).to_pylist():
                self.files.setdefault(row["content_sha256"], row)
            for row in self.store.read_parquet(mark).to_pylist():
                if self._wanted(row):
                    chunks.append((posixpath.join(shard_dir, row["part"]), row))
        return chunks

    def _wanted(self, row: dict) -> bool:
        key = (row["content_sha256"], row["chunk_index"])
        if row["content_sha256"] in self.skip or key in self.frames:
            return False
        self.frames[key] = row["n_frames"]
        return True

    def _features(self, path: str) -> np.ndarray:
        """A part's frames, ``(frames, n_mels)`` float32, memory-mapped (downloaded first).

        A part on an object store is downloaded once, at its first wave.
        """
        local = path
        if not self.store.is_local:
            if path not in self._downloaded:
                self._downloaded[path] = os.path.join(
                    self.local_dir, f"part-{len(self._downloaded):06d}.f32"
                )
                self.store.fs.get_file(path, self._downloaded[path])
            local = self._downloaded[path]
        return np.memmap(local, dtype=np.float32, mode="r").reshape(-1, self.n_mels)


class ResultWriter:
    """Writes each content's result as soon as its last chunk is decoded, in the background.

    Results go to the cache, or to the run's folder when the content failed
    (``core.staging.write_results``, ``RESULT_THREADS`` files at a time), from one background
    thread, so the thread feeding the model never waits on storage.

    Args:
        store: The storage root.
        run_dir: The run's staging folder (failed contents' results).
        options_key: Cache key of the model and options.
        written: Contents never to write (their result is already cached).
        retry: ``retry(write, what)`` calls ``write`` again while it raises ``OSError``
            (``resources.storage.retry_write``); default: once.

    Attributes:
        written: Contents written or never to write.
        audio_s: Decoded audio of the contents written, failed ones excepted, seconds.
    """

    def __init__(
        self,
        store: Storage,
        run_dir: str,
        options_key: str,
        written: Iterable[str] = (),
        retry: Callable[[Callable[[], None], str], None] = lambda write, what: write(),
    ):
        self.store = store
        self.run_dir = run_dir
        self.options_key = options_key
        self.written = set(written)
        self.retry = retry
        self.audio_s = 0.0
        self._chunks: dict[str, list[ChunkResult]] = defaultdict(list)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="results")
        self._futures: list[Future] = []

    def add(self, results: list[ChunkResult]) -> None:
        """Keep chunk results until their content is complete."""
        for result in results:
            self._chunks[result.key[0]].append(result)

    def flush_complete(self, staged: StagedChunks) -> list[dict]:
        """Write every content whose file row is staged and whose chunks are all decoded.

        Returns:
            The ``SHARD_FILES`` rows of the contents written now.
        """
        complete = [
            row
            for sha, row in staged.files.items()
            if sha not in self.written and len(self._chunks.get(sha, ())) == row["chunks"]
        ]
        if not complete:
            return []
        shas = [row["content_sha256"] for row in complete]
        chunks = [result for sha in shas for result in self._chunks.pop(sha, ())]
        assembled = assemble(complete, chunks, staged.frames, datetime.now(UTC).isoformat())
        self.written.update(shas)
        self.audio_s += sum(
            r["duration_s"] or 0.0 for r in complete if r["status"] != STATUS_FAILED
        )
        write = partial(write_results, self.store, self.run_dir, self.options_key, assembled)
        self._futures.append(self._pool.submit(self.retry, write, f"{len(assembled)} results"))
        return complete

    def close(self) -> None:
        """Wait for every write; re-raise the first that failed (after its retries)."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown()

"""What waits for a worker in ``BatchTranscriber.transcribe_waves``, and the results so far.

The scheduler owns the queue of windows waiting for a first pass, the rows waiting for
temperature fallback, each chunk's ``ChunkResult`` until it is yielded, and the packing
bookkeeping; ``run`` keeps one job in flight per worker thread. Jobs go out through
``next_job``; their typed outcomes (``core.windows``, ``core.packing``) come back through
``finish``, each recording itself into the results. A chunk's result is handed out
(``finished_results``) once nothing of it waits or is in flight; no chunk is decoded in more
than ``MAX_SEEK_ROUNDS`` windows.
"""

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import NamedTuple, Protocol

from whisper_pipeline.core.packing import PackedWindow, pack_chunks
from whisper_pipeline.core.types import ChunkInput, ChunkResult, DecodingOptions
from whisper_pipeline.core.windows import Retry, Window

logger = logging.getLogger(__name__)

MAX_SEEK_ROUNDS = 8
"""Windows decoded per chunk at most (its first and its continuations); a 30 s chunk rarely
needs more than two."""

IDLE_WAIT_S = 0.05
"""Seconds the scheduler waits before asking again for a wave when its source had none ready
(an empty wave: chunks still being preprocessed, ``core.streaming.StagedChunks``) and no job
is in flight."""

PACK_STOP_MIN_CHUNKS = 16
"""Chunks decoded in packed windows before ``PACK_STOP_OUT_FRACTION`` is judged."""

PACK_STOP_OUT_FRACTION = 0.5
"""Packing stops for the rest of a ``transcribe_waves`` call once more than this share of the
chunks decoded in packed windows came back out of them (decoded alone or packed again): each
such chunk costs its share of the packed window and a window of its own, so packing then costs
more than the encoder passes it saves. On the shared corpus, whose short chunks are consecutive
sentences of one reader, repeated clips and languages tiny.en does not know, most came back
out, and packing every chunk was slower than none (``benchmarks/RESULTS.md``)."""


class Job(NamedTuple):
    """Work for one worker: a batch of windows for a first pass, or rows for fallback."""

    fallback: bool
    items: list


class SchedulerClient(Protocol):
    """What a ``Scheduler`` reads its settings from and reports packing and busy time to.

    ``BatchTranscriber`` is one. ``unpacked``, ``packing_stopped``, ``busy_s`` and
    ``first_batch_at`` are the client's public report of the call: the scheduler adds the
    chunks that came out of packed windows, by reason, sets ``packing_stopped`` when it stops
    packing, sets ``busy_s`` to the wall seconds with at least one job in flight (the model
    busy) and ``first_batch_at`` to the ``time.monotonic()`` of the first job.
    """

    options: DecodingOptions
    fixed_language: str | None
    unpacked: Counter[str]
    packing_stopped: bool
    busy_s: float
    first_batch_at: float | None

    def fallback_size(self) -> int:
        """Rows per temperature-fallback job."""


class Scheduler:
    """The waiting windows and fallback rows of one ``transcribe_waves`` call, and its results.

    Args:
        client: Settings and report (``SchedulerClient``).
        refill: Waiting windows below which the next wave is taken in.

    Attributes:
        results: Result per chunk taken in and not yet yielded, in the order taken in.
        windows: Windows (``Window``, ``PackedWindow``) waiting for a first pass.
        retries: Rows waiting for temperature fallback.
        decoded: Windows decoded so far per chunk (``MAX_SEEK_ROUNDS`` bounds it).
        repacked: Chunks already packed again (a packed window left them unfinished, or they
            shared a segment with a neighbour).
        packing: Whether chunks are still packed (``PACK_STOP_OUT_FRACTION``).
        packed_chunks: Chunks decoded in packed windows so far; ``packed_out``: those that
            came back out of them.
    """

    def __init__(self, client: SchedulerClient, refill: int):
        self._client = client
        self.refill = refill
        self.results: dict[Hashable, ChunkResult] = {}
        self.windows: list[Window | PackedWindow] = []
        self.retries: list[Retry] = []
        self.decoded: Counter[Hashable] = Counter()
        self.repacked: set[Hashable] = set()
        self.more = True
        self.packing = client.options.pack_windows and client.fixed_language is not None
        self.packed_chunks = self.packed_out = 0
        client.busy_s, client.first_batch_at = 0.0, None

    def run(
        self,
        waves: Iterator[list[ChunkInput]],
        workers: int,
        decode_batch: Callable[[list], list],
        fallback_group: Callable[[list[Retry]], list],
    ) -> Iterator[list[ChunkResult]]:
        """Run jobs on ``workers`` threads until every chunk of every wave is done.

        Whenever a worker is free it gets the next job; a finished job's outcomes join the
        queue at once, and the next wave is taken in whenever fewer than ``refill`` windows
        wait. An empty wave means the source has nothing ready yet: the scheduler goes on with
        what it has, and when that is nothing, waits ``IDLE_WAIT_S`` and asks again.

        Args:
            waves: Lists of chunks, consumed lazily; empty while none is ready.
            workers: Jobs in flight at most (the model's CTranslate2 workers).
            decode_batch: ``windows -> an outcome per window`` (a first pass).
            fallback_group: ``retries -> an outcome per retry`` (temperature fallback).

        Yields:
            Whenever a job finishes chunks, their results (never an empty list).
        """
        with ThreadPoolExecutor(workers) as executor:
            in_flight: dict[Future, Job] = {}
            while True:
                self.take_waves(waves)
                while len(in_flight) < workers:
                    job = self.next_job(workers - len(in_flight))
                    if job is None:
                        break
                    if not in_flight:
                        busy_since = time.monotonic()
                        client = self._client
                        client.first_batch_at = client.first_batch_at or busy_since
                    work = fallback_group if job.fallback else decode_batch
                    in_flight[executor.submit(work, job.items)] = job
                if not in_flight:
                    if not self.more:
                        break
                    time.sleep(IDLE_WAIT_S)
                    continue
                # A worker left idle asks the source again soon: new chunks may be staged.
                timeout = IDLE_WAIT_S if self.more and len(in_flight) < workers else None
                done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    self.finish(in_flight.pop(future), future.result())
                if not in_flight:
                    self._client.busy_s += time.monotonic() - busy_since
                finished = self.finished_results(in_flight.values())
                if finished:
                    yield finished

    def take_waves(self, waves: Iterator[list[ChunkInput]]) -> None:
        """Take in waves while fewer than ``refill`` windows wait (packed where enabled)."""
        while self.more and len(self.windows) < self.refill:
            wave = next(waves, None)
            if wave is None:
                self.more = False
                return
            if not wave:  # nothing ready yet
                return
            for chunk in wave:
                self.results[chunk.key] = ChunkResult(key=chunk.key)
            if self.packing:
                packed, alone = pack_chunks(wave)
                self.windows += packed + [Window(chunk, 0) for chunk in alone]
            else:
                self.windows += [Window(chunk, 0) for chunk in wave]

    def next_job(self, free: int) -> Job | None:
        """The next job for one of ``free`` idle workers, or ``None`` when nothing waits.

        A full group of fallback rows goes first (their encoder output is held in memory), or
        any fallback rows when no window waits. Otherwise the longest waiting windows, up to
        ``batch_size``, fewer when that leaves the other free workers a share.
        """
        size = self._client.fallback_size()
        if len(self.retries) >= size or (self.retries and not self.windows):
            self.retries.sort(key=lambda retry: retry.window.frames, reverse=True)
            group, self.retries = self.retries[:size], self.retries[size:]
            return Job(True, group)
        if not self.windows:
            return None
        self.windows.sort(key=lambda window: window.frames, reverse=True)
        count = min(self._client.options.batch_size, math.ceil(len(self.windows) / free))
        batch, self.windows = self.windows[:count], self.windows[count:]
        return Job(False, batch)

    def finish(self, job: Job, outcomes: list) -> None:
        """Record a finished job's outcomes (one per item); queue what they leave to decode."""
        following: list[Window | PackedWindow] = []
        unfinished: list[ChunkInput] = []
        for outcome in outcomes:
            if not job.fallback:
                self.decoded.update(outcome.window.keys)
            follow = outcome.record(self.results)
            following += follow.windows
            unfinished += follow.unfinished
            self.retries += follow.retries
            self._client.unpacked.update(dict(follow.reasons))
            if follow.packed:
                self.packed_chunks += follow.packed
                self.packed_out += len(follow.windows) + len(follow.unfinished)
        self.judge_packing()
        # Chunks a packed window left unfinished, or that shared a segment, share new
        # windows once; a chunk that comes back again is decoded alone.
        twice = [chunk for chunk in unfinished if chunk.key in self.repacked]
        again = [chunk for chunk in unfinished if chunk.key not in self.repacked]
        if not self.packing:
            twice, again = twice + again, []
        self.repacked.update(chunk.key for chunk in again)
        packed, alone = pack_chunks(again)
        following += packed + [Window(chunk, 0) for chunk in alone + twice]
        self.windows += [
            window
            for window in following
            if all(self.decoded[key] < MAX_SEEK_ROUNDS for key in window.keys)
        ]

    def judge_packing(self) -> None:
        """Stop packing when too many packed chunks came back out (``PACK_STOP_OUT_FRACTION``).

        The packed windows still waiting are split into one window per chunk; later waves are
        not packed.
        """
        if not self.packing or self.packed_chunks < PACK_STOP_MIN_CHUNKS:
            return
        if self.packed_out <= PACK_STOP_OUT_FRACTION * self.packed_chunks:
            return
        self.packing = False
        self._client.packing_stopped = True
        waiting = [w for w in self.windows if isinstance(w, PackedWindow)]
        self.windows = [w for w in self.windows if not isinstance(w, PackedWindow)]
        self.windows += [Window(item, 0) for window in waiting for item in window.items]
        split = sum(len(w.items) for w in waiting)
        if split:
            self._client.unpacked["packing stopped"] += split
        logger.info(
            "window packing stopped: %d of %d chunks came back out of packed windows; "
            "%d chunks waiting in packed windows are decoded alone",
            self.packed_out,
            self.packed_chunks,
            split,
        )

    def finished_results(self, busy: Iterable[Job]) -> list[ChunkResult]:
        """Pop the results of the chunks with nothing waiting and nothing in ``busy`` jobs."""
        pending = {key for window in self.windows for key in window.keys}
        pending.update(key for retry in self.retries for key in retry.keys)
        for job in busy:
            pending.update(key for item in job.items for key in item.keys)
        return [self.results.pop(key) for key in list(self.results) if key not in pending]

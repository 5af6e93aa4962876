"""Progress lines for long loops: done out of total, throughput and time left, every 30 s.

Dagster-free: the caller passes a ``log`` callable (``context.log.info`` in an op). A line is
written when ``advance`` is called and ``interval_s`` has passed since the last one, and a
background heartbeat (while the object is used as a context manager) writes one even when a
single item takes longer than the interval, so a user watching the run never waits more than
``interval_s`` for news.
"""

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines."""


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: ``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Counts items and audio seconds done, and logs where a loop stands.

    Example line (``label="shard 0 preprocessing"``, ``unit="files"``)::

        shard 0 preprocessing: 12/40 files, 312/1200 s audio (26%), 10.4 audio s/s,
        about 1 min 25 s left

    and at the end::

        shard 0 preprocessing: done, 40/40 files, 1200 s audio in 115.3 s (10.4 audio s/s)

    Time left is the audio still to do at the rate so far, or, when the total audio is unknown
    (0), the items still to do at the item rate so far.

    Args:
        label: What is being done, at the start of each line.
        total_items: Items the loop will handle.
        total_audio_s: Audio seconds those items hold (0 when unknown).
        unit: Name of the items in the line (``files``, ``chunks``).
        interval_s: Least seconds between two lines (the final one excepted).
        log: Called with each line.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        label: str,
        total_items: int,
        total_audio_s: float,
        *,
        unit: str = "items",
        interval_s: float = LOG_INTERVAL_S,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.unit = label, unit
        self.total_items, self.total_audio_s = total_items, max(0.0, total_audio_s)
        self.interval_s, self.log, self.clock = interval_s, log, clock
        self.items = 0
        self.audio_s = 0.0
        self.started = self.last_logged = clock()
        self.finished = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def line(self) -> str:
        """Where the loop stands now, as one log line."""
        elapsed = self.clock() - self.started
        rate = self.audio_s / elapsed if elapsed > 0 else 0.0
        share = ""
        if self.total_audio_s:
            share = f" ({min(100, round(100 * self.audio_s / self.total_audio_s))}%)"
        return (
            f"{self.label}: {self.items}/{self.total_items} {self.unit}, "
            f"{self.audio_s:.0f}/{self.total_audio_s:.0f} s audio{share}, "
            f"{rate:.1f} audio s/s, {self._time_left(elapsed)}"
        )

    def _time_left(self, elapsed: float) -> str:
        if self.total_audio_s and self.audio_s > 0:
            left = (self.total_audio_s - self.audio_s) * elapsed / self.audio_s
        elif self.items > 0:
            left = (self.total_items - self.items) * elapsed / self.items
        else:
            return "time left unknown"
        return f"about {format_duration(max(0.0, left))} left"

    def advance(self, items: int = 1, audio_s: float = 0.0) -> None:
        """Count ``items`` more done, holding ``audio_s`` seconds; log if the interval passed."""
        with self._lock:
            self.items += items
            self.audio_s += audio_s
        self._maybe_log()

    def _maybe_log(self) -> None:
        with self._lock:
            if self.finished or self.clock() - self.last_logged < self.interval_s:
                return
            self.last_logged = self.clock()
            line = self.line()
        self.log(line)

    def finish(self) -> None:
        """Log the final line (once): everything done, total wall time and throughput."""
        with self._lock:
            if self.finished:
                return
            self.finished = True
            elapsed = self.clock() - self.started
            rate = self.audio_s / elapsed if elapsed > 0 else 0.0
            line = (
                f"{self.label}: done, {self.items}/{self.total_items} {self.unit}, "
                f"{self.audio_s:.0f} s audio in {elapsed:.1f} s ({rate:.1f} audio s/s)"
            )
        self.log(line)

    def each(self, items: Iterable[T], audio_s: Callable[[T], float]) -> Iterator[T]:
        """Yield ``items``, counting each one done (with ``audio_s(item)``) when the next is asked.

        An item the loop body skips with ``continue`` counts as done too.
        """
        for item in items:
            yield item
            self.advance(1, audio_s(item))

    def __enter__(self) -> "Progress":
        """Start the heartbeat: a line every ``interval_s`` even while one item takes long."""
        self._heartbeat = threading.Thread(target=self._beat, name="progress", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        """Stop the heartbeat; log the final line unless the block raised."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if exc_type is None:
            self.finish()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s / 4)):
            self._maybe_log()

"""Celery workers of the ``celery`` profile, started for tests and benchmarks."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

CELERY_APP = "whisper_pipeline.execution.celery"
"""The module ``celery -A`` loads the app from."""

WORKER_READY_TIMEOUT_S = 120.0
"""How long ``running_worker`` waits for a worker to say it is ready."""


def worker_command(queue: str, concurrency: int) -> list[str]:
    """``celery worker`` of this app consuming one queue, as an argument list.

    Args:
        queue: ``placement.CPU_QUEUE`` or ``placement.GPU_QUEUE``.
        concurrency: Pool processes, i.e. steps at once (1 per GPU for ``gpu``).

    Returns:
        Arguments for ``subprocess``, starting with this interpreter. The node name is
        ``<queue>@<host>``, so a host's cpu and gpu workers do not clash.
    """
    return [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--queues", queue,
        "--concurrency", str(concurrency), "--hostname", f"{queue}@%h", "--loglevel", "INFO",
    ]  # fmt: skip


@contextlib.contextmanager
def running_worker(
    queue: str,
    concurrency: int,
    env: Mapping[str, str],
    cwd: str,
    log_path: str,
    ready_timeout_s: float = WORKER_READY_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """Run ``worker_command()`` in its own session for the ``with`` block, then kill its group.

    The block starts once the worker has logged that it is ready (connected to the broker and
    consuming ``queue``).

    Args:
        queue: The queue it consumes.
        concurrency: Its pool processes.
        env: Its environment (``WHISPER_PIPELINE_PROFILE=celery``, the broker, the root...).
        cwd: Its working directory.
        log_path: Where its output goes.
        ready_timeout_s: Longest wait for readiness.

    Yields:
        The worker's main process (its pool processes are its children, in its group).

    Raises:
        RuntimeError: The worker exited, or was not ready in time (its log is in the message).
    """
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            worker_command(queue, concurrency),
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        ready = re.compile(rf"\b{re.escape(queue)}@\S+ ready\.")
        deadline = time.monotonic() + ready_timeout_s
        while not ready.search(Path(log_path).read_text()):
            if worker.poll() is not None or time.monotonic() > deadline:
                state = "exited" if worker.poll() is not None else "was not ready"
                raise RuntimeError(
                    f"celery worker for {queue!r} {state}:\n{Path(log_path).read_text()[-5000:]}"
                )
            time.sleep(0.1)
        yield worker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)

"""A throwaway Redis server (the Celery broker and result backend of the ``celery`` profile's
tests), started once per test session on loopback, with no persistence.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

STARTUP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ping(port: int) -> bool:
    """Whether a Redis server answers ``PING`` on 127.0.0.1:port (raw RESP: no client needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """``redis://127.0.0.1:<port>``: a ``redis-server`` killed when the session ends.

    Tests append their own database number (``/1``, ``/2``...) so they never see each other's
    queues. Skipped when ``redis-server`` is not installed, unless ``CI`` is set (then it fails:
    CI must run the Celery tests).
    """
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but redis-server is not on PATH (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    # The server's log goes to a file, not a pipe nobody drains.
    log = tempfile.TemporaryFile("w+")
    command = [executable, "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(port):
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"redis-server exited with {process.returncode}:\n{log.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()

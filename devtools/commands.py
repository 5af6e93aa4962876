"""Dagster CLI commands of this code location (used by the demo, tests and benchmarks).

Each runs ``python -m ...`` with this interpreter, so no console script has to be on ``PATH``.
"""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

DEFINITIONS_MODULE = "whisper_pipeline.definitions"


def materialize_command(
    partition: str, *extra_args: str, module: str = DEFINITIONS_MODULE
) -> list[str]:
    """``dagster asset materialize`` of every asset for ``partition``, as an argument list.

    Args:
        partition: Daily partition key, ``YYYY-MM-DD``.
        *extra_args: Appended as they are (e.g. ``"-c", "run_config.yaml"``).
        module: Code location module (``[tool.dagster] module_name``).

    Returns:
        Arguments for ``subprocess.run``, starting with this interpreter.
    """
    return [
        sys.executable, "-m", "dagster", "asset", "materialize", "-m", module,
        "--select", "*", "--partition", partition, *extra_args,
    ]  # fmt: skip


def daemon_command(module: str = DEFINITIONS_MODULE) -> list[str]:
    """``dagster-daemon run`` for the code location (schedules, sensors, run queue, backfills)."""
    return [sys.executable, "-m", "dagster._daemon", "run", "-m", module]


def backfill_command(
    partitions: list[str], job: str = "transcribe_partition", module: str = DEFINITIONS_MODULE
) -> list[str]:
    """``dagster job backfill`` of ``job`` for ``partitions``, without a prompt.

    It submits one run per partition to the run queue (a daemon must be running) and returns.
    """
    return [
        sys.executable, "-m", "dagster", "job", "backfill", "-m", module, "-j", job,
        "--partitions", ",".join(partitions), "--noprompt",
    ]  # fmt: skip


@contextlib.contextmanager
def running_daemon(env: dict, cwd: str, log_path: str) -> Iterator[subprocess.Popen]:
    """Run ``daemon_command()`` in its own session for the ``with`` block, then kill its group.

    Args:
        env: The daemon's environment (``DAGSTER_HOME``, ``WHISPER_PIPELINE_ROOT``...).
        cwd: Its working directory (the repository).
        log_path: Where its output goes.

    Yields:
        The daemon process.
    """
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            daemon_command(), env=env, cwd=cwd, stdout=log, stderr=log, start_new_session=True
        )
    try:
        yield daemon
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)

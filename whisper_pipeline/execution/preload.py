"""What the multiprocess executor's forkserver imports once, for every step process it forks.

Dagster, this code location, the instance's storage, pandas and ``pyarrow.dataset`` are
imported with the cyclic collector paused, then frozen (``gc.freeze``, as Python's ``gc``
documentation advises before ``fork()`` without ``exec()``). Importing touches no CUDA device
and starts no thread (onnxruntime, whose import starts one, is left out). Every step process
forked from here is SIGKILLed when the run's process ends, however it ends (a thread waits on
a pidfd of it): no step outlives its run, so none keeps the ``gpu`` pool's slot.
"""

import gc
import importlib.util
import os
import select
import signal
import threading

PRELOADED = (
    # Dagster's multiprocess executor imports this first of all when no preload list names it;
    # the executor's list (``execution.multiprocess.EXECUTOR_CONFIG``) names it after this
    # module, so it is imported here, with the collector paused, instead.
    "dagster._core.executor.multiprocess",
    "dagster",
    "dagster._core.storage.root",
    "dagster._core.storage.sqlite_storage",
    "pandas",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "whisper_pipeline.definitions",
)
"""Modules imported, in order; ``dagster_postgres`` too where it is installed."""


def _preload() -> None:
    names = list(PRELOADED)
    if importlib.util.find_spec("dagster_postgres") is not None:
        names.append("dagster_postgres")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def _run_process_watch() -> int | None:
    """A pidfd of this forkserver's parent, the run's process; ``None`` where there is none.

    Opened here, while the parent is surely alive, so a reused pid can never stand for it.
    """
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(os.getppid())
    except OSError:  # kernels before 5.3, seccomp profiles without the call
        return None


RUN_PROCESS_FD = _run_process_watch()
"""Readable once the run's process has ended (a pidfd, inherited by every forked step)."""


def _watch_run_process() -> None:
    """Block until the run's process ends, then SIGKILL this step process."""
    select.select([RUN_PROCESS_FD], [], [])
    os.kill(os.getpid(), signal.SIGKILL)


def _die_with_the_run() -> None:
    """In each forked step process: a daemon thread that kills the step when its run's ends.

    The forkserver itself does not end with the run's process while steps run (Python hands
    every child its "alive" pipe, so it outlives them), so a step would go on, holding the
    ``gpu`` pool's slot and the accelerator, after its run's process was SIGKILLed alone (the
    OOM killer, a run worker killed from outside): with this, it ends with it.
    """
    threading.Thread(target=_watch_run_process, name="run-process-watch", daemon=True).start()


if RUN_PROCESS_FD is not None:
    os.register_at_fork(after_in_child=_die_with_the_run)
_preload()

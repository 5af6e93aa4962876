"""Modules the multiprocess executor's forkserver imports once, for every step process it forks.

Each step process forked from the forkserver starts with these already imported. Besides Dagster
and this code location, that is the instance's storage: a step connects to the instance
(``DagsterInstance.from_ref``), and importing the SQLite storage (SQLAlchemy, Alembic) took
0.6 s of each step's 0.6 s start (``benchmarks/RESULTS.md``). The PostgreSQL storage of the
``production`` profile is imported too when it is installed. So are ``pyarrow.dataset`` and
pandas, which pyarrow imports on first use (``pyarrow.parquet.read_table``,
``Table.from_pylist``): 0.4 s in every step, all of which use one or the other, paid once here
instead (``benchmarks/step_overhead.py``). Importing touches no CUDA device and starts no thread but
OpenBLAS's pool (numpy), which OpenBLAS shuts down before a fork and restarts in the child, so
forking afterwards is safe. onnxruntime (Silero VAD) is left out: its import starts a thread.

Every step process forked from here is SIGKILLed when the run's process ends, however it ends
(a thread waits on a pidfd of it): no step outlives its run.

The cyclic garbage collector is paused while they are imported: imports make few cycles, but
every few thousand new objects set off a collection that traverses all the older ones, a quarter
of the import time (1.6 s against 1.2 s for the whole list, on the 2-core AMD EPYC of
``benchmarks/RESULTS.md``), and this import is what the run's first step waits for. Then
everything imported is frozen (``gc.freeze``), as Python's ``gc`` documentation advises before
``fork()`` without ``exec()``: the collector of every step process forked from here skips those
objects instead of traversing them (touching their pages, which copy-on-write then copies), and
the forkserver's own exit at the end of the run no longer collects them. That exit took 0.6-0.8 s
of CPU while the CLI waited on its output pipes (``benchmarks/cli_timeline.py``).
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

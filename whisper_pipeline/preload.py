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

Last, everything imported is frozen (``gc.freeze``), as Python's ``gc`` documentation advises
before ``fork()`` without ``exec()``: the cyclic collector of every step process forked from here
skips those objects instead of traversing them (touching their pages, which copy-on-write then
copies), and the forkserver's own exit at the end of the run no longer collects them. That exit
took 0.6 s of two cores' CPU while the CLI waited on its output pipes
(``benchmarks/cli_timeline.py``; ``benchmarks/RESULTS.md``).
"""

import gc
import importlib.util

import dagster  # noqa: F401
import dagster._core.storage.root  # noqa: F401
import dagster._core.storage.sqlite_storage  # noqa: F401
import pandas  # noqa: F401
import pyarrow.dataset  # noqa: F401
import pyarrow.parquet  # noqa: F401

import whisper_pipeline.definitions  # noqa: F401

if importlib.util.find_spec("dagster_postgres") is not None:
    import dagster_postgres  # noqa: F401

gc.freeze()

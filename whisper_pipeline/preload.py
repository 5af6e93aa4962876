"""Modules the multiprocess executor's forkserver imports once, for every step process it forks.

Each step process forked from the forkserver starts with these already imported. Besides Dagster
and this code location, that is the instance's storage: a step connects to the instance
(``DagsterInstance.from_ref``), and importing the SQLite storage (SQLAlchemy, Alembic) took
0.6 s of each step's 0.6 s start (``benchmarks/RESULTS.md``). The PostgreSQL storage of the
``production`` profile is imported too when it is installed. Importing touches no CUDA device
and starts no thread, so forking afterwards is safe.
"""

import importlib.util

import dagster  # noqa: F401
import dagster._core.storage.root  # noqa: F401
import dagster._core.storage.sqlite_storage  # noqa: F401

import whisper_pipeline.definitions  # noqa: F401

if importlib.util.find_spec("dagster_postgres") is not None:
    import dagster_postgres  # noqa: F401

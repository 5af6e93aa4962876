"""The project's definitions with the multiprocess start method chosen by an environment variable.

Only for ``benchmarks/step_overhead.py``: ``OVERHEAD_START_METHOD`` is ``forkserver`` (the
project's setting, preloading ``whisper_pipeline.execution.preload``),
``forkserver-no-pyarrow`` (the
same without pandas and ``pyarrow.dataset``: Dagster, the instance's storage and the code
location, as the project preloaded before 2026-11-26) or ``spawn`` (Dagster's default).
Everything but the executor's start method is ``whisper_pipeline.definitions.defs`` itself
(the executor is the project's ``multiprocess_executor``).
"""

import os

import dagster as dg

from whisper_pipeline import definitions
from whisper_pipeline.execution import multiprocess

method = os.environ.get("OVERHEAD_START_METHOD", "forkserver")
config = dict(multiprocess.EXECUTOR_CONFIG)
if method == "spawn":
    config["start_method"] = {"spawn": {}}
elif method == "forkserver-no-pyarrow":
    modules = ["dagster._core.storage.sqlite_storage", "whisper_pipeline.definitions"]
    config["start_method"] = {"forkserver": {"preload_modules": modules}}

defs = dg.Definitions(
    assets=definitions.defs.assets,
    asset_checks=definitions.defs.asset_checks,
    jobs=definitions.defs.jobs,
    schedules=definitions.defs.schedules,
    sensors=definitions.defs.sensors,
    resources=definitions.defs.resources,
    executor=multiprocess.multiprocess_executor.configured(config),
)

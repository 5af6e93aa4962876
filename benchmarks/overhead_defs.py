"""The project's definitions with the multiprocess start method chosen by an environment variable.

Only for ``benchmarks/step_overhead.py``: ``OVERHEAD_START_METHOD`` is ``forkserver`` (the
project's setting, preloading dagster and the code location) or ``spawn`` (Dagster's default).
Everything but the executor is ``whisper_pipeline.definitions.defs`` itself.
"""

import os

import dagster as dg

from whisper_pipeline import definitions

method = os.environ.get("OVERHEAD_START_METHOD", "forkserver")
config = dict(definitions.EXECUTOR_CONFIG)
if method == "spawn":
    config["start_method"] = {"spawn": {}}

defs = dg.Definitions(
    assets=definitions.defs.assets,
    asset_checks=definitions.defs.asset_checks,
    jobs=definitions.defs.jobs,
    schedules=definitions.defs.schedules,
    sensors=definitions.defs.sensors,
    resources=definitions.defs.resources,
    executor=dg.multiprocess_executor.configured(config),
)

"""The project's definitions with the multiprocess start method chosen by an environment variable.

Only for ``benchmarks/step_overhead.py``: ``OVERHEAD_START_METHOD`` is ``forkserver`` (the
project's setting, preloading dagster and the code location) or ``spawn`` (Dagster's default).
"""

import os

import dagster as dg

from whisper_pipeline import definitions

method = os.environ.get("OVERHEAD_START_METHOD", "forkserver")
config = dict(definitions.EXECUTOR_CONFIG)
if method == "spawn":
    config["start_method"] = {"spawn": {}}

defs = dg.Definitions(
    assets=[definitions.audio_manifest, definitions.transcript_tables],
    asset_checks=[definitions.transcript_table_checks],
    resources=definitions.resources,
    executor=dg.multiprocess_executor.configured(config),
)

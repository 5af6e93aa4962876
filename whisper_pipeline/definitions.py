"""The code location: every asset, check, job, schedule, resource and the executor, assembled once.

Importing this module never touches CUDA or loads a model (the forkserver preloads it).
"""

import dagster as dg

from whisper_pipeline.assets.manifest import audio_manifest
from whisper_pipeline.assets.transcription import ACCELERATOR_TAG_KEY, transcript_tables
from whisper_pipeline.checks import transcript_table_checks
from whisper_pipeline.io_managers import PartitionedParquetIOManager
from whisper_pipeline.resources import StorageResource, WhisperModelResource
from whisper_pipeline.schedules import nightly_transcription_schedule, transcribe_partition_job

EXECUTOR_CONFIG = {
    # One transcription step at a time within a run; the pool in dagster.yaml does the same
    # across runs.
    "tag_concurrency_limits": [{"key": ACCELERATOR_TAG_KEY, "value": "gpu", "limit": 1}],
    # Step processes fork from a server that has already imported dagster and this code
    # location, instead of re-importing them for every step.
    "start_method": {
        "forkserver": {"preload_modules": ["dagster", "whisper_pipeline.definitions"]}
    },
}

executor = dg.multiprocess_executor.configured(EXECUTOR_CONFIG)

storage = StorageResource()

resources = {
    "storage": storage,
    "whisper": WhisperModelResource(),
    "staging_io_manager": PartitionedParquetIOManager(storage=storage, area="staging"),
    "table_io_manager": PartitionedParquetIOManager(storage=storage, area="tables"),
}

defs = dg.Definitions(
    assets=[audio_manifest, transcript_tables],
    asset_checks=[transcript_table_checks],
    jobs=[transcribe_partition_job],
    schedules=[nightly_transcription_schedule],
    resources=resources,
    executor=executor,
)

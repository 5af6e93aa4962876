"""The code location: every asset (with its checks), job, schedule, resource and the executor.

``WHISPER_PIPELINE_PROFILE`` (``whisper_pipeline.execution.profiles``) picks the executor and
the resources' settings; the assets, checks, jobs, schedules and sensors are the same in every
profile.
Importing this module never touches CUDA or loads a model (the forkserver preloads it).
"""

import dagster as dg

from whisper_pipeline.defs.assets.manifest import audio_manifest
from whisper_pipeline.defs.assets.subtitles import subtitle_files
from whisper_pipeline.defs.assets.transcription import transcript_tables
from whisper_pipeline.defs.dead_runs import dead_run_sensor
from whisper_pipeline.defs.jobs import TRANSCRIBE_JOB_NAME, transcribe_partition_job
from whisper_pipeline.defs.landing import landing_zone_sensor
from whisper_pipeline.defs.schedules import nightly_transcription_schedule
from whisper_pipeline.execution.multiprocess import build_executor
from whisper_pipeline.execution.profiles import LOCAL, current_profile
from whisper_pipeline.resources import StorageResource, TranscriberResource, WhisperModelResource
from whisper_pipeline.resources.io_managers import (
    PartitionedParquetIOManager,
    StagingPickleIOManager,
)


def build_resources(whisper: TranscriberResource | None = None, profile: str = LOCAL) -> dict:
    """Every resource of the code location, wired so run config reaches every consumer.

    ``storage`` is configured at launch and the IO managers depend on that top-level resource
    (not on a copy), so ``resources.storage.config.root`` or ``endpoint_url`` set in run config
    or the launchpad moves the landing zone, staging, cache and tables together. Every profile
    but ``local`` requires a root (``StorageResource.require_root``) and keeps op outputs under
    it (``StagingPickleIOManager``), since their steps may run on other machines.

    Args:
        whisper: The transcriber (a ``TranscriberResource``); default the real faster-whisper
            ``WhisperModelResource`` (tests pass a test double).
        profile: A ``whisper_pipeline.execution.profiles`` name.

    Returns:
        Resources by key.
    """
    storage = StorageResource.configure_at_launch(require_root=profile != LOCAL)
    distributed = (
        {} if profile == LOCAL else {"io_manager": StagingPickleIOManager(storage=storage)}
    )
    return {
        **distributed,
        "storage": storage,
        "whisper": whisper if whisper is not None else WhisperModelResource(),
        "staging_io_manager": PartitionedParquetIOManager(
            storage=storage, area="staging", job_name=TRANSCRIBE_JOB_NAME
        ),
        "table_io_manager": PartitionedParquetIOManager(
            storage=storage, area="tables", job_name=TRANSCRIBE_JOB_NAME
        ),
    }


PROFILE = current_profile()
"""The profile this code location was loaded with."""

defs = dg.Definitions(
    assets=[audio_manifest, transcript_tables, subtitle_files],
    jobs=[transcribe_partition_job],
    schedules=[nightly_transcription_schedule],
    sensors=[dead_run_sensor, landing_zone_sensor],
    resources=build_resources(profile=PROFILE),
    executor=build_executor(PROFILE),
)

"""The code location: every asset (with its checks), job, schedule, resource and the executor.

``WHISPER_PIPELINE_PROFILE`` (``whisper_pipeline.execution.profiles``) picks the executor and
the resources' settings; the assets, checks, jobs, schedules and sensors are the same in every
profile.
Importing this module never touches CUDA or loads a model (the forkserver preloads it).
"""

import gc

import dagster as dg

from whisper_pipeline.core.memory import hugepage_malloc_tunables
from whisper_pipeline.defs.assets.manifest import audio_manifest
from whisper_pipeline.defs.assets.subtitles import subtitle_files
from whisper_pipeline.defs.assets.transcription import transcript_tables
from whisper_pipeline.defs.dead_runs import dead_run_sensor
from whisper_pipeline.defs.landing import landing_zone_sensor
from whisper_pipeline.defs.schedules import nightly_transcription_schedule, transcribe_partition_job
from whisper_pipeline.execution.placement import ACCELERATOR_TAG_KEY
from whisper_pipeline.execution.profiles import CELERY, K8S, LOCAL, current_profile
from whisper_pipeline.resources import StorageResource, TranscriberResource, WhisperModelResource
from whisper_pipeline.resources.io_managers import (
    PartitionedParquetIOManager,
    StagingPickleIOManager,
)

EXECUTOR_CONFIG = {
    # One transcription step at a time within a run; the pool in dagster.yaml does the same
    # across runs.
    "tag_concurrency_limits": [{"key": ACCELERATOR_TAG_KEY, "value": "gpu", "limit": 1}],
    # Step processes fork from a server that has already imported dagster, the instance's
    # storage and this code location, instead of re-importing them for every step. Dagster's
    # own module is named so that Dagster does not import it ahead of ours, with the garbage
    # collector running (``whisper_pipeline.execution.preload`` imports it with the collector
    # paused).
    "start_method": {
        "forkserver": {
            "preload_modules": [
                "whisper_pipeline.execution.preload",
                "dagster._core.executor.multiprocess",
            ]
        }
    },
}


def _create_multiprocess_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's multiprocess executor, with huge pages for ``malloc`` in its step processes.

    Runs in the run's process before any step starts, so the forkserver the executor execs,
    and every step process forked from it, reads ``glibc.malloc.hugetlb=1``
    (``core.memory.hugepage_malloc_tunables``: the corpus partition's transcription step 10%
    faster); the run's own ``malloc`` is left as it is.

    It also freezes the run process's objects (``gc.freeze``): Dagster, the code location and
    the instance, all alive until the run ends. The process then only polls its steps, and its
    exit no longer collects them: 0.5-0.7 s less after a CLI partition's last event
    (``benchmarks/cli_timeline.py``). The objects are not collected, even as garbage, for the
    rest of the process: nothing for a run process, a bounded few thousand per
    ``execute_job`` in a process that runs many.
    """
    gc.freeze()
    hugepage_malloc_tunables()
    return dg.multiprocess_executor.executor_creation_fn(init_context)


multiprocess_executor = dg.ExecutorDefinition(
    name=dg.multiprocess_executor.name,
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=dg.multiprocess_executor.get_requirements,
    executor_creation_fn=_create_multiprocess_executor,
    description=dg.multiprocess_executor.description,
)
"""``dg.multiprocess_executor`` with the same name, configuration and requirements, whose step
processes ask ``malloc`` for huge pages."""

executor = multiprocess_executor.configured(EXECUTOR_CONFIG)


def build_executor(profile: str = LOCAL) -> dg.ExecutorDefinition:
    """The executor of a profile (``whisper_pipeline.execution.profiles``).

    ``local`` and ``production``: the multiprocess ``executor``. ``celery`` and ``k8s`` import
    their optional dependencies (extras ``celery``, ``k8s``) only when selected.
    """
    if profile == CELERY:
        from whisper_pipeline.execution.celery import celery_executor

        return celery_executor
    if profile == K8S:
        from whisper_pipeline.execution.k8s import k8s_executor

        return k8s_executor
    return executor


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
        "staging_io_manager": PartitionedParquetIOManager(storage=storage, area="staging"),
        "table_io_manager": PartitionedParquetIOManager(storage=storage, area="tables"),
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

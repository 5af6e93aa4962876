"""The executor of each profile; on one host, Dagster's multiprocess executor, tuned.

One transcription step at a time within a run (``tag_concurrency_limits``; the ``gpu`` pool does
the same across runs), step processes forked from a forkserver that preloaded
``whisper_pipeline.execution.preload``, and huge pages for their ``malloc``
(``core.memory.hugepage_malloc_tunables``).
"""

import gc

import dagster as dg

from whisper_pipeline.core.memory import hugepage_malloc_tunables
from whisper_pipeline.core.sharding import usable_cores
from whisper_pipeline.execution.placement import ACCELERATOR_TAG_KEY
from whisper_pipeline.execution.profiles import CELERY, K8S, LOCAL

EXECUTOR_CONFIG = {
    # A step per core, and one more: a transcription step runs beside the preprocessing steps
    # whose shards it reads (``plan_shards`` makes one shard per core), mostly waiting on the
    # accelerator.
    "max_concurrent": usable_cores() + 1,
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

    Runs in the run's process before any step starts, so the forkserver the executor execs, and
    every step process forked from it, reads ``glibc.malloc.hugetlb=1``
    (``core.memory.hugepage_malloc_tunables``); the run's own ``malloc`` is left as it is. It
    also freezes the run process's objects (``gc.freeze``: Dagster, the code location, the
    instance, alive until the run ends), so its exit does not collect them; they are never
    collected, even as garbage (a bounded few thousand per ``execute_job`` in a process that
    runs many). ``benchmarks/RESULTS.md``, "Collector tuning", measures both.
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

import ast
import ctypes
import gc
import os
import subprocess
import sys

import dagster as dg
import pytest

from whisper_pipeline.core.memory import GLIBC_TUNABLES, hugepage_malloc_tunables
from whisper_pipeline.defs.metrics import cpu_usage
from whisper_pipeline.execution.multiprocess import executor

SCRIPT = """
import sys
import numpy as np
from whisper_pipeline.core.memory import release_free_memory

kept, live = [], []
for step in range(400):
    live.append(np.ones((((step * 5) % 11) + 1) * 262144, np.float32))  # 1 to 11 MiB
    kept.append(np.ones(16384, np.uint8))
    if len(live) > 3:
        live.pop(0)
live.clear()
if sys.argv[1] == "trim":
    assert release_free_memory()
rss = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
print(int(rss) // 1024)
"""


def rss_after_churn(mode: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(completed.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_free_memory_returns_the_freed_heap_to_the_system():
    # Blocks of 1 to 11 MiB (three alive at a time) freed between small blocks that stay, as a
    # model's batch buffers are: glibc keeps them in its heap arenas, resident, until trimmed.
    assert rss_after_churn("trim") + 20 < rss_after_churn("keep")


def test_hugepage_tunable_is_added_once_and_never_overrides_a_setting():
    environ = {}
    assert hugepage_malloc_tunables(environ)
    assert environ == {GLIBC_TUNABLES: "glibc.malloc.hugetlb=1"}
    assert not hugepage_malloc_tunables(environ)  # already there: unchanged
    assert environ == {GLIBC_TUNABLES: "glibc.malloc.hugetlb=1"}
    environ = {GLIBC_TUNABLES: "glibc.malloc.arena_max=2"}
    assert hugepage_malloc_tunables(environ)
    assert environ[GLIBC_TUNABLES] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    environ = {GLIBC_TUNABLES: "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"}
    assert not hugepage_malloc_tunables(environ)  # the user's explicit choice (the ablation)
    assert environ[GLIBC_TUNABLES] == "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"


FAULTS_SCRIPT = """
import gc
import dagster as dg
from whisper_pipeline_tests.test_memory import fault_job
with dg.instance_for_test() as instance:
    with dg.execute_job(dg.reconstructable(fault_job), instance) as result:
        assert result.success
        frozen = result.output_for_node("count_frozen_objects"), gc.get_freeze_count()
        print((result.output_for_node("touch_malloc_block"), frozen))
"""

BLOCK_BYTES = 64 * 2**20


@dg.op
def touch_malloc_block() -> tuple:
    """Minor page faults of writing a fresh 64 MiB ``malloc`` block, and ``GLIBC_TUNABLES``."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = cpu_usage()[2]
    block = libc.malloc(BLOCK_BYTES)
    ctypes.memset(block, 1, BLOCK_BYTES)
    faults = cpu_usage()[2] - before
    libc.free(block)
    return faults, os.environ.get(GLIBC_TUNABLES)


@dg.op
def count_frozen_objects() -> int:
    """Objects in the step process's permanent GC generation (``gc.freeze``)."""
    return gc.get_freeze_count()


@dg.job(executor_def=executor)
def fault_job():
    touch_malloc_block()
    count_frozen_objects()


def run_fault_job(tunables: str | None) -> tuple[tuple[int, str | None], tuple[int, int]]:
    """``((faults, GLIBC_TUNABLES), (step's frozen objects, run process's))`` of a real run."""
    env = {k: v for k, v in os.environ.items() if k != GLIBC_TUNABLES}
    env.update({} if tunables is None else {GLIBC_TUNABLES: tunables})
    completed = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT], env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return ast.literal_eval(completed.stdout.strip().splitlines()[-1])


def step_faults(tunables: str | None) -> tuple[int, str | None]:
    return run_fault_job(tunables)[0]


def hugepages_available() -> bool:
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    version = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # "glibc 2.36"
    return "[never]" not in mode and tuple(map(int, version.split(".")[:2])) >= (2, 35)


@pytest.mark.slow
@pytest.mark.skipif(not hugepages_available(), reason="needs THP and glibc 2.35+")
def test_step_processes_fault_malloc_blocks_in_huge_pages():
    # The project's executor, a real forkserver and step process: a 64 MiB block is 16,384
    # pages of 4 KiB, or 32 huge pages of 2 MiB.
    faults, seen = step_faults(None)
    assert seen == "glibc.malloc.hugetlb=1"
    assert faults < BLOCK_BYTES // 4096 // 4  # most of the block in huge pages
    # An explicit setting wins: the ablation gets the small pages.
    faults, seen = step_faults("glibc.malloc.hugetlb=0")
    assert seen == "glibc.malloc.hugetlb=0"
    assert faults >= BLOCK_BYTES // 4096


@pytest.mark.slow
def test_step_and_run_processes_freeze_what_outlives_the_run():
    # The forkserver freezes what it preloaded (Dagster, pandas, pyarrow, the code location:
    # a few hundred thousand objects) before forking the step; the run process freezes its own
    # when it creates the executor. Without gc.freeze both counts are 0.
    step_frozen, run_frozen = run_fault_job(None)[1]
    assert step_frozen > 100_000
    assert run_frozen > 100_000

"""Keep a long transcription process's heap from growing with the work it has done.

CTranslate2 allocates per-batch buffers of a few MiB (encoder activations, beam states) of ever
new sizes. glibc's ``malloc`` raises its mmap threshold each time a mapped block is freed (up to
32 MiB), so after the first batches these buffers come from the heap arenas, whose free space
fragments and stays resident: a transcription step's peak RSS grew with the chunks it had
decoded. Fixing the threshold low (``mallopt(M_MMAP_THRESHOLD)``) stopped the growth but made
every buffer a fresh mapping, and CPU decoding much slower (``benchmarks/RESULTS.md``).
``malloc_trim`` between waves of chunks instead hands the arenas' free pages back to the system
(glibc 2.8 and later release free pages inside the heap too, not only its top) at the cost of
one call per wave.

The opposite cost is the one that dominated: CTranslate2's CPU buffers above 32 MiB (a batch's
encoder attention scores: 8 rows x 6 heads x 1500 x 1500 float32, 432 MB) are always fresh
mappings, so every page of them is faulted in anew on every batch. A batch of 8 encoder windows
took about 850,000 minor page faults, and the kernel's share of a transcription step's CPU time
was about a quarter. ``hugepage_malloc_tunables`` makes ``malloc`` ask for transparent huge pages
(2 MiB, one fault each) for its mappings and heap (``benchmarks/RESULTS.md``).
"""

import ctypes
import ctypes.util
import os
import sys
from collections.abc import MutableMapping

GLIBC_TUNABLES = "GLIBC_TUNABLES"
"""The environment variable glibc reads its tunables from, once, when a process starts."""

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb"
"""glibc 2.35+ malloc tunable (glibc manual, "Memory Allocation Tunables"): ``1`` makes
``malloc`` call ``madvise(MADV_HUGEPAGE)`` on the memory it maps, so transparent huge pages
apply where the kernel's THP mode is ``madvise`` (the common default) as well as ``always``.
Older glibc ignores an unknown tunable; with THP ``never`` it changes nothing."""


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system (glibc ``malloc_trim(0)``).

    Returns:
        Whether memory was released: ``False`` where there is nothing to call (not Linux, not
        glibc) or glibc found nothing to release.
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim(0) == 1


def hugepage_malloc_tunables(environ: MutableMapping[str, str] | None = None) -> bool:
    """Ask glibc's ``malloc`` in processes started later from ``environ`` for huge pages.

    Appends ``glibc.malloc.hugetlb=1`` to ``GLIBC_TUNABLES`` in ``environ`` (default
    ``os.environ``), unless it already names ``glibc.malloc.hugetlb``: an explicit setting, such
    as ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` for the ablation, is left as it is. Only
    processes exec'd afterwards read it (the multiprocess executor's forkserver and the step
    processes it forks), never the running one.

    Measured on a 2-core AMD EPYC, tiny.en int8: a batch of 8 encoder windows 2.8 s instead of
    3.95 s (``benchmarks/page_faults.py``: 65,000 page faults instead of 842,000), the corpus
    partition through the CLI 1.18x faster; peak RSS about 2% higher (``benchmarks/RESULTS.md``).

    Returns:
        Whether the tunable was added.
    """
    environ = os.environ if environ is None else environ
    current = environ.get(GLIBC_TUNABLES, "")
    names = {item.split("=", 1)[0].strip() for item in current.split(":") if item.strip()}
    if HUGEPAGE_TUNABLE in names:
        return False
    setting = f"{HUGEPAGE_TUNABLE}=1"
    environ[GLIBC_TUNABLES] = f"{current}:{setting}" if current.strip() else setting
    return True

"""glibc ``malloc`` settings for long transcription processes.

``release_free_memory`` (``malloc_trim``) hands the heap arenas' free pages back to the system
between waves, so a transcription step's RSS does not grow with the chunks it has decoded.
``hugepage_malloc_tunables`` makes processes started later ask ``malloc`` for transparent huge
pages, so CTranslate2's large per-batch buffers (fresh mappings on every batch) are faulted in
2 MiB at a time instead of 4 KiB. Neither has any effect off glibc. Why, and what was tried:
docs/ARCHITECTURE.md, "core/memory.py"; figures in ``benchmarks/RESULTS.md``, "Memory".
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
    processes it forks), never the running one (``benchmarks/RESULTS.md``, "Huge pages").

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

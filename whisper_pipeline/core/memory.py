"""Keep a long transcription process's heap from growing with the work it has done.

glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` with ``mmap`` and returns them to the
system on ``free``, but it raises that threshold each time such a block is freed (up to 32 MiB,
``DEFAULT_MMAP_THRESHOLD_MAX``). After the first batches, CTranslate2's per-batch buffers of a few
MiB (encoder activations, beam states) therefore come from the heap arenas, where blocks of ever
new sizes fragment them and the process keeps the memory: a step's peak grew with the chunks it
had decoded (``benchmarks/transcription_memory.py``; figures in ``benchmarks/RESULTS.md``).
Setting the threshold explicitly (``mallopt``) also turns the dynamic raise off (glibc
``malloc/malloc.c``, ``mallopt`` and ``M_MMAP_THRESHOLD``).
"""

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter number of the mmap threshold (glibc ``malloc.h``)."""

MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own initial threshold (``DEFAULT_MMAP_THRESHOLD_MIN``), kept fixed."""


def fix_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process, so large freed blocks go back to the system.

    Args:
        threshold_bytes: Blocks at least this large are mapped and unmapped on their own.

    Returns:
        Whether the threshold was set: ``False`` off Linux/glibc (musl, macOS), where nothing is
        changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1

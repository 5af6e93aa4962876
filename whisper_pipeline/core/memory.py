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
"""

import ctypes
import ctypes.util
import sys


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

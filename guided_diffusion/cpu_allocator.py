"""Keep freed CPU memory inside the process for reuse (Linux with glibc; elsewhere a no-op).

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap` and returns it to
the kernel on `free`. A U-Net forward pass on CPU allocates and frees such blocks for every large activation, so
each one costs new page faults: on 2 cores that is about half the time of an ADM-256 step, and more for larger
batches, which also distorts every comparison of batch sizes. Serving all blocks from the heap and not trimming
it removes that cost; the price is that the process keeps its peak memory until it exits.
"""

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def reuse_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse. Idempotent; returns whether it is in effect."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; 0 mmap'd blocks means none is handed back on free, and a trim threshold
    # of 2 GiB keeps the heap's free top instead of returning it after every large free.
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied

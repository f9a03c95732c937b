"""Keep freed CPU memory inside the process for reuse (Linux with glibc; elsewhere a no-op).

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh `mmap` and returns it to
the kernel on `free`. A U-Net forward pass on CPU allocates and frees such blocks for every large activation, so
each one costs new page faults: on 2 cores that is about half the time of an ADM-256 step, and more for larger
batches, which also distorts every comparison of batch sizes. Serving all blocks from the heap and not trimming
it removes that cost; the price is that the process keeps its peak memory until it exits.

The library applies the setting by itself, once, at the first forward pass of one of its networks on the CPU
(`note_forward`), so the plain Python API (a notebook, a user's script) is as fast as the entry points, and a
process that never runs a network on the CPU (GPU sampling, evaluation) is left alone. The setting is
process-wide: set the environment variable PAG_NO_CPU_ALLOCATOR=1 to keep glibc's default everywhere.
"""

import ctypes
import ctypes.util
import os
import platform

OPT_OUT = "PAG_NO_CPU_ALLOCATOR"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False
_decided = False  # whether the library default has been settled (by the first CPU forward pass or an entry point)


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


def opted_out():
    return os.environ.get(OPT_OUT, "").strip() not in ("", "0")


def use_on_cpu():
    """The library's default for a process that runs networks on the CPU: reuse freed memory unless
    PAG_NO_CPU_ALLOCATOR is set. Returns whether the setting is in effect."""
    global _decided
    _decided = True
    return False if opted_out() else reuse_freed_memory()


def note_forward(x):
    """Called at the start of every network forward pass: the first one on the CPU settles the default."""
    if not _decided and x.device.type == "cpu":
        use_on_cpu()


def in_effect():
    return _applied

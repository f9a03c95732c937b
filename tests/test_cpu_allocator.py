"""The CPU entry points keep freed memory for reuse: repeated large allocations stop costing page faults."""

import platform
import subprocess
import sys

import pytest

from guided_diffusion.cpu_allocator import reuse_freed_memory

COUNT_FAULTS = """
import resource, sys, torch
from guided_diffusion.cpu_allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
h = torch.ones(16, 1024, 1024)  # 64 MB activations, as in a forward pass: above glibc's mmap threshold
for _ in range(30):  # the heap settles after a few dozen blocks
    h = h * 1.0  # a new output block; the previous one is freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    h = h * 1.0
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode):
    out = subprocess.run([sys.executable, "-c", COUNT_FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists for glibc's malloc only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    default, reuse = page_faults("default"), page_faults("reuse")
    assert default > 10 * 16_384 * 0.9  # every 64 MB output is 16K freshly faulted 4 KiB pages
    assert reuse < default / 10
    assert reuse_freed_memory() and reuse_freed_memory()  # idempotent

"""Freed CPU memory is kept for reuse (entry points, and the plain Python API from its first CPU forward pass):
repeated large allocations stop costing page faults."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from guided_diffusion.runtime.cpu_allocator import reuse_freed_memory

MEASURE = """
h = torch.ones(16, 1024, 1024)  # 64 MB activations, as in a forward pass: above glibc's mmap threshold
for _ in range(30):  # the heap settles after a few dozen blocks
    h = h * 1.0  # a new output block; the previous one is freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    h = h * 1.0
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
COUNT_FAULTS = """
import resource, sys, torch
from guided_diffusion.runtime.cpu_allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
""" + MEASURE


REPO = Path(__file__).resolve().parents[2]


def page_faults(mode, script=COUNT_FAULTS, **env):
    environ = {k: v for k, v in os.environ.items() if k != "PAG_NO_CPU_ALLOCATOR"}
    environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, env=environ)
    return int(out.stdout.strip())


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists for glibc's malloc only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    default, reuse = page_faults("default"), page_faults("reuse")
    assert default > 10 * 16_384 * 0.9  # every 64 MB output is 16K freshly faulted 4 KiB pages
    assert reuse < default / 10
    assert reuse_freed_memory() and reuse_freed_memory()  # idempotent


# A user's own script: import the library, build a model, run it on the CPU. No entry point, no explicit call.
PLAIN_API = """
import resource, sys, torch
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
flags = model_and_diffusion_defaults()
flags.update(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_head_channels=16)
model, diffusion = create_model_and_diffusion(**flags)
if sys.argv[1] == "forward":
    with torch.no_grad():
        model(torch.zeros(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
""" + MEASURE


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting exists for glibc's malloc only")
def test_plain_api_gets_the_setting_at_its_first_cpu_forward_pass_and_can_opt_out():
    plain = page_faults("forward", PLAIN_API)
    opted_out = page_faults("forward", PLAIN_API, PAG_NO_CPU_ALLOCATOR="1")
    import_only = page_faults("import", PLAIN_API)  # no network ran on the CPU: the process is left alone
    assert opted_out > 10 * 16_384 * 0.9 and import_only > 10 * 16_384 * 0.9
    # the first 64 MB block is faulted in once (16,384 pages and a few), every later one reuses it
    assert plain < 2 * 16_384 < opted_out / 5

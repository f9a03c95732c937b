import sys
from pathlib import Path

import pytest
import torch

from guided_diffusion.cpu_allocator import reuse_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))

reuse_freed_memory()  # as the CPU entry points do: the suite's forward passes skip fresh page faults


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors: one intra-op thread is faster, and much faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

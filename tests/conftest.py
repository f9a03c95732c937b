"""Shared by the whole suite: a tiny ADM, one closeness check, and one intra-op thread for tiny models.

Helper modules beside this file: golden.py (the reference fixtures), programs.py (console scripts and
launchers), sampling_cases.py (golden sampling calls).
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.runtime.cpu_allocator import reuse_freed_memory
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

sys.path.insert(0, str(Path(__file__).resolve().parent))

reuse_freed_memory()  # as the CPU entry points do: the suite's forward passes skip fresh page faults

# A tiny ADM: 16x16, two levels, attention at 8x8 (input_blocks.3.1, middle_block.1, output_blocks.0.1,
# output_blocks.1.1). Only the flags that differ from the release defaults, so tests can pass them to a CLI.
TINY_ADM = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
                num_head_channels=16)


def tiny_adm_flags(**overrides):
    """All model and diffusion flags of the tiny ADM, with `overrides` (e.g. image_size=8,
    attention_resolutions="4" for the same network at 8x8)."""
    return {**model_and_diffusion_defaults(), **TINY_ADM, **overrides}


def tiny_adm(seed=None, weights_seed=None, **overrides):
    """The tiny ADM and its diffusion. `seed` seeds torch's global generator before the release's initialisation
    (as a training run starts); `weights_seed` then replaces every weight by random_weights(model, seed)."""
    if seed is not None:
        torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**tiny_adm_flags(**overrides))
    if weights_seed is not None:
        random_weights(model, weights_seed)
    return model, diffusion


def random_weights(module, seed):
    """Every parameter drawn from N(0, 0.05²) by its own generator: ADM zero-initialises its output layers, so
    an untrained release model predicts zero everywhere and no guidance would change anything."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return module


def garments(n, seed=0):
    """`n` random 28x28 grey images padded to the Fashion-MNIST testbed's 32x32 RGB (uint8 NHWC)."""
    from guided_diffusion.data.fashion_mnist import pad_to_rgb

    rng = np.random.default_rng(seed)
    return pad_to_rgb(rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))


def _as_float64(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def assert_close(actual, expected, tol, what, rel=0.0):
    """Assert |actual - expected| <= tol + rel * |expected| everywhere (tensors, arrays or numbers; a scalar
    `expected` applies to every element); the message names `what` and the max abs and rel differences."""
    a, e = _as_float64(actual), _as_float64(expected)
    if e.dim() > 0:
        assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    diff = (a - e).abs()
    ok = bool((diff <= tol + rel * e.abs()).all())  # False for any NaN
    if not ok:
        max_abs = diff.max().item()
        max_rel = (diff / e.abs().clamp_min(1e-300)).max().item()
        tol = float(torch.as_tensor(tol).max())  # the largest, where the tolerance varies by element
        raise AssertionError(f"{what}: max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} "
                             f"> tolerance {tol:.3g} abs + {rel:.3g} rel")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and tensors: one intra-op thread is faster, and much faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def activation_cache_in_a_temporary_folder(tmp_path_factory):
    """The evaluator's activation caches (and those of the console scripts the tests start) go to a folder of
    the test session, not into the user's ~/.cache."""
    before = os.environ.get("PAG_EVAL_CACHE")
    os.environ["PAG_EVAL_CACHE"] = str(tmp_path_factory.mktemp("activation_cache"))
    yield
    if before is None:
        os.environ.pop("PAG_EVAL_CACHE", None)
    else:
        os.environ["PAG_EVAL_CACHE"] = before

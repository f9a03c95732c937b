"""Sampling runs of `pag-image-sample` on a tiny random-weight model, for the end-to-end tests of
tests/sampling/: the flags, a run, its outputs, and what a test waits for while a run goes on."""

import re
import time
from pathlib import Path

import numpy as np
import torch

from conftest import TINY_ADM, tiny_adm
from programs import assert_ok, cli_flags, run_script, start_script

TINY_MODEL = dict(TINY_ADM, learn_sigma=True, resblock_updown=True)  # the flags the CLI gets
NUM_SAMPLES = 10
# PAG and SAG together, so every guided path (batched perturbed pass, SAG's second pass) is covered.
SAMPLE_FLAGS = ["--timestep_respacing", "4", "--num_samples", str(NUM_SAMPLES), "--seed", "3", "--progress", "False",
                "--pag_scale", "2.0", "--pag_layers", "input_blocks.3.1", "middle_block.1",
                "--sag_scale", "0.5", "--sag_layer", "output_blocks.1.1", "--sag_blur_sigma", "1.0"]


def run_sample(output_dir, *extra, launcher=(), batch_size=4, check=True, config_flags=None, wait=True,
               script="pag-image-sample"):
    """Run the installed console script; with `check`, it must exit with status 0. With `wait=False`, the
    started process (in its own session, so that a test can signal it)."""
    args = [*(config_flags or []), "--batch_size", batch_size, "--output_dir", output_dir, *extra]
    if not wait:
        return start_script(script, *args)
    result = run_script(script, *args, launcher=launcher)
    if check:
        assert_ok(result)
    return result


def make_tiny(root, weights_seed=0, **model_overrides):
    """The tiny model saved under `root` and the CLI flags that sample it (the SAMPLE_FLAGS run)."""
    model_flags = dict(TINY_MODEL, **model_overrides)
    model, _ = tiny_adm(weights_seed=weights_seed, **model_flags)
    torch.save(model.state_dict(), Path(root) / "model.pt")
    return cli_flags(model_flags) + ["--model_path", str(Path(root) / "model.pt")] + SAMPLE_FLAGS


def with_flag(flags, name, value):
    """`flags` with flag `name` set to `value` (replaced where present)."""
    flags = list(flags)
    if name in flags:
        flags[flags.index(name) + 1] = str(value)
    else:
        flags += [name, str(value)]
    return flags


def final_arrays(output_dir, num=NUM_SAMPLES, size=16):
    with np.load(Path(output_dir) / f"samples_{num}x{size}x{size}x3.npz") as data:
        return {k: data[k] for k in data.files}


def assert_same_samples(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


def shards(output_dir):
    return sorted((Path(output_dir) / "shards").glob("*.npz"))


def claims(output_dir):
    """The claims in a sampling folder (not the temporaries a claim is written to before it is linked)."""
    folder = Path(output_dir) / "claims"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def job_records(output_dir):
    folder = Path(output_dir) / "jobs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def wait_for(condition, process=None, seconds=120, what="the condition"):
    deadline = time.time() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{process.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def images_sampled(stderr):
    """The number of images one job (one process) sampled itself, from its log line."""
    return int(re.search(r"rank 0/1 finished: (\d+) images", stderr).group(1))


def tiny_reference(root):
    """The tiny model's flags under `root` and a finished reference run of it (batches of 4): the module fixture
    of the sampling end-to-end tests."""
    flags = make_tiny(root)
    reference_dir = root / "reference"
    run_sample(reference_dir, *flags, batch_size=4)
    return {"root": root, "flags": flags, "reference_dir": reference_dir, "reference": final_arrays(reference_dir)}

"""Training and sampling speed against the ADM release (openai/guided-diffusion), side by side in one run on
the CPU, on the Fashion-MNIST testbed's model (configs/fashion32/model.yaml).

Rows, in images/s (median of the timed repeats; methods interleaved so machine load hits all alike):
  train        one optimisation step (forward, backward, AdamW, EMA update) on the same batch and timesteps:
               our `TrainLoop.run_step` (bf16: `mixed_precision="bf16"`, the forward pass autocast) against
               the release's `TrainLoop.run_step`, which has no bf16 option: its bf16 row runs the whole step
               under torch.autocast("cpu", torch.bfloat16)
  sample       DDIM-25 (respaced), unguided: our `sampling.sample_images` (bf16: precision autocast-bf16)
               against the release's `ddim_sample_loop` (bf16: under torch.autocast("cpu", torch.bfloat16))
Both code bases build the model from the same flags (our config loader and defaults) and load the same random
weights. Both loops draw their timesteps with our uniform sampler, in the same state (the release's draws
from numpy's global generator instead, at the same cost); the training noise is each loop's own. The fp32
samplers start from the same noise, and the largest difference of their samples is printed under the table.

`--adm_release PATH`: a checkout of github.com/openai/guided-diffusion (it needs blobfile and mpi4py), whose
`guided_diffusion` package is imported as `adm_release`. Without it, only ours is measured.
On a machine that other jobs share, run it with OMP_NUM_THREADS=1: oversubscribed threads stall in bursts
longer than a sampling run, which interleaving cannot even out.
"""

import argparse
import importlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
from timing import timed  # benchmarks/timing.py, beside this script

from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.diffusion.timestep_samplers import create_named_schedule_sampler
from guided_diffusion.model.precision import apply_precision
from guided_diffusion.runtime import cpu_allocator
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.sampling.images import sample_images
from guided_diffusion.sampling.seeding import ImageNoise
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.training.loop import TrainLoop

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "fashion32" / "model.yaml"
RESPACING = "ddim25"
RELEASE_NAME = "adm_release"
TRAINING = dict(lr=3e-4, ema_rate="0.999", weight_decay=0.0)  # configs/fashion32/train.yaml
PRECISIONS = ("fp32", "bf16")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adm_release", help="a checkout of openai/guided-diffusion (default: measure ours only)")
    parser.add_argument("--train_batch", type=int, default=64, help="images per training step (the testbed's)")
    parser.add_argument("--sample_batch", type=int, default=100, help="images per sampling run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of every method, median reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every method first")
    return parser.parse_args(argv)


def load_release(path):
    """The release's `guided_diffusion` package, imported as `adm_release` so it cannot shadow ours."""
    package = Path(path) / "guided_diffusion"
    spec = importlib.util.spec_from_file_location(RELEASE_NAME, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    if spec is None or not (package / "__init__.py").exists():
        raise SystemExit(f"--adm_release {path}: no guided_diffusion package there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[RELEASE_NAME] = module  # its relative imports resolve through this name
    spec.loader.exec_module(module)
    for name in ("dist_util", "logger", "script_util", "train_util"):
        setattr(module, name, importlib.import_module(f"{RELEASE_NAME}.{name}"))
    return module


def testbed_flags(respacing=""):
    flags = model_and_diffusion_defaults()
    flags.update(load_config(MODEL_CONFIG), timestep_respacing=respacing)
    return flags


def release_flags(release, flags):
    """Our flags under the release's names; ours may only add flags the testbed leaves at their default."""
    names = release.script_util.model_and_diffusion_defaults()
    extra = {k for k in flags if k not in names and flags[k] != model_and_diffusion_defaults()[k]}
    if extra:
        raise SystemExit(f"the release has no flag for {sorted(extra)}: it cannot build the same model")
    return {k: flags[k] for k in names}


def build(create, flags, weights):
    model, diffusion = create(**flags)
    ours, theirs = set(weights), set(model.state_dict())
    assert ours == theirs, f"state-dict names differ: only ours {sorted(ours - theirs)[:3]}, " \
                           f"only the release's {sorted(theirs - ours)[:3]}"
    model.load_state_dict(weights)
    return model.eval(), diffusion


def training_steps(weights, batch, release, run_dir):
    """{(precision, code base): one training step}, each on its own copy of the weights."""
    steps, timesteps = {}, {}
    for precision in PRECISIONS:
        model, diffusion = build(create_model_and_diffusion, testbed_flags(), weights)
        loop = TrainLoop(model=model.train(), diffusion=diffusion, data=None, batch_size=len(batch), seed=0,
                         mixed_precision="bf16" if precision == "bf16" else "none", progress=False,
                         run_dir=run_dir, device="cpu", **TRAINING)
        timesteps[precision] = loop.schedule_sampler.state_dict()
        steps[precision, "ours"] = lambda loop=loop: loop.run_step(batch, {})
    if release is None:
        return steps
    release.dist_util.setup_dist()  # a gloo group of one process: after our loops, which would wrap DDP in it
    release.logger.configure(dir=run_dir, format_strs=[])
    for precision in PRECISIONS:
        model, diffusion = build(release.script_util.create_model_and_diffusion,
                                 release_flags(release, testbed_flags()), weights)
        sampler = create_named_schedule_sampler("uniform", diffusion)
        sampler.load_state_dict(timesteps[precision])  # the same timesteps as our loop draws
        loop = release.train_util.TrainLoop(model=model.train(), diffusion=diffusion, data=None,
                                            batch_size=len(batch), microbatch=-1, log_interval=10**9,
                                            save_interval=10**9, resume_checkpoint="", schedule_sampler=sampler,
                                            **TRAINING)
        steps[precision, "release"] = lambda loop=loop, autocast=precision == "bf16": _autocast_if(
            autocast, loop.run_step, batch, {})
    return steps


def sampling_runs(weights, noise_seed, batch_size, release):
    """{(precision, code base): one DDIM-25 run of `batch_size` images}, all from the same initial noise."""
    indices = list(range(batch_size))
    model, diffusion = build(create_model_and_diffusion, testbed_flags(RESPACING), weights)
    runs = {}
    for precision in PRECISIONS:
        sampling_model = apply_precision(model, "autocast-bf16" if precision == "bf16" else "fp32")
        runs[precision, "ours"] = lambda m=sampling_model: sample_images(
            m, diffusion, indices, seed=noise_seed, image_size=model.image_size, use_ddim=True)
    if release is None:
        return runs
    theirs, their_diffusion = build(release.script_util.create_model_and_diffusion,
                                    release_flags(release, testbed_flags(RESPACING)), weights)
    shape = (batch_size, 3, model.image_size, model.image_size)
    for precision in PRECISIONS:
        def run(autocast=precision == "bf16"):
            noise = ImageNoise(noise_seed, indices, shape[1:]).initial()  # the noise sample_images starts from
            return _autocast_if(autocast, their_diffusion.ddim_sample_loop, theirs, shape, noise=noise,
                                clip_denoised=True)
        runs[precision, "release"] = run
    return runs


def _autocast_if(enabled, fn, *args, **kwargs):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
        return fn(*args, **kwargs)


def main(argv=None):
    args = parse_args(argv)
    release = load_release(args.adm_release) if args.adm_release else None
    dist_util.setup_dist()  # as our training entry point does (one process: no group; the CPU allocator)
    torch.manual_seed(0)
    weights = create_model_and_diffusion(**testbed_flags())[0].state_dict()
    image_size = testbed_flags()["image_size"]
    batch = torch.rand(args.train_batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    batch = batch * 2 - 1  # images in [-1, 1], as the data loader gives them
    with tempfile.TemporaryDirectory() as run_dir:
        methods = {("train",) + key: (fn, args.train_batch)
                   for key, fn in training_steps(weights, batch, release, run_dir).items()}
        methods.update({("sample",) + key: (fn, args.sample_batch)
                        for key, fn in sampling_runs(weights, 0, args.sample_batch, release).items()})
        seconds, outputs, _ = timed({k: fn for k, (fn, _) in methods.items()}, args.warmup, args.repeats)
    speed = {key: images / seconds[key] for key, (_, images) in methods.items()}

    allocator = "freed memory kept for reuse" if cpu_allocator.in_effect() else "glibc default malloc"
    print(f"Fashion-MNIST testbed model ({MODEL_CONFIG.relative_to(ROOT)}), CPU: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {allocator}; train batch {args.train_batch} (AdamW, EMA), "
          f"sample batch {args.sample_batch} (DDIM-25, unguided); median of {args.repeats} rounds after "
          f"{args.warmup} warm-up; release: {args.adm_release or 'not measured'}\n")
    print("| task | ours: images/s | release: images/s | ours / release |")
    print("|---|---:|---:|---:|")
    for task, label in (("train", "train step"), ("sample", "sample DDIM-25")):
        for precision in PRECISIONS:
            row = label + (", fp32" if precision == "fp32" else ", bf16 autocast")
            if task == "train" and precision == "bf16":
                row += " (release: whole step under autocast)"
            ours, theirs = speed[task, precision, "ours"], speed.get((task, precision, "release"))
            cells = (f"{theirs:.1f} | {ours / theirs:.2f}x" if theirs else "— | —")
            print(f"| {row} | {ours:.1f} | {cells} |")
    if release is not None:
        difference = (outputs["sample", "fp32", "ours"] - outputs["sample", "fp32", "release"]).abs().max()
        print(f"\nfp32 samples from the same noise: max |ours - release| = {float(difference):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What speeds up a training step and a sampling forward pass of the testbed's model on this CPU, side by side.

Variants (each on its own copy of the same weights, the same batch, timesteps and noise):
  fp32                 eager, float32
  bf16                 eager, bf16 autocast (the testbed's training and sampling precision): the reference row
  bf16 + channels_last the model's weights and the inputs in channels-last memory format
  bf16 + compile       torch.compile(model) (inductor; its compile time is reported apart)
  bf16 + both          channels-last and torch.compile

Rows give images/s (median of the timed rounds; variants interleaved so machine load hits all alike), the
ratio to bf16, and how far the result is from bf16's: the step's loss (train) or the largest |difference| of
the model output (forward), from the shipped trained weights. Equal results means within bf16's own
rounding. Stop other jobs first (`kill -STOP <pid>` ... `kill -CONT <pid>` for a long run).

    python benchmarks/training_speed.py                 # the testbed's sizes: train batch 64, forward batch 100
"""

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from timing import timed  # benchmarks/timing.py, beside this script

from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.model.checkpoints import read_state_dict
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.training.loop import TrainLoop

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "fashion32" / "model.yaml"
WEIGHTS = ROOT / "checkpoints" / "fashion32_uncond_ema.pt"  # trained weights: outputs worth comparing
TRAINING = dict(lr=3e-4, ema_rate="0.999", weight_decay=0.0, mixed_precision="bf16")  # fashion32/train.yaml
VARIANTS = {  # name: (autocast bf16, channels_last, compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16 + channels_last": (True, True, False),
    "bf16 + compile": (True, False, True),
    "bf16 + channels_last + compile": (True, True, True),
}
REFERENCE = "bf16"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_batch", type=int, default=64, help="images per training step (the testbed's)")
    parser.add_argument("--forward_batch", type=int, default=100, help="images per forward pass (the table's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of every variant, median reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds of every variant first (compiles)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which variants to measure")
    return parser.parse_args(argv)


def testbed_model(weights=None):
    flags = model_and_diffusion_defaults()
    flags.update(load_config(MODEL_CONFIG))
    model, diffusion = create_model_and_diffusion(**flags)
    if weights is not None:
        model.load_state_dict(weights)
    return model, diffusion


def prepared(model, channels_last, compile_model):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def layout(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class TrainStep:
    """One `TrainLoop.run_step` of a variant on its own copy of the weights; every call starts from them again
    (so that each round times the same work and the first step's result can be compared)."""

    def __init__(self, weights, batch, variant, run_dir):
        autocast, channels_last, compile_model = VARIANTS[variant]
        model, diffusion = testbed_model(weights)
        self.model = prepared(model.train(), channels_last, compile_model)
        self.batch = layout(batch, channels_last)
        options = dict(TRAINING, mixed_precision="bf16" if autocast else "none")
        self.loop = TrainLoop(model=self.model, diffusion=diffusion, data=None, batch_size=len(batch), seed=0,
                              progress=False, run_dir=run_dir, device="cpu", **options)
        self.start = copy.deepcopy(self.loop.opt.state_dict()), [p.detach().clone() for p in self.loop.model_params]
        self.sampler_state = self.loop.schedule_sampler.state_dict()
        self.noise_state = self.loop.noise_gen.get_state()

    def __call__(self):
        opt_state, params = self.start
        with torch.no_grad():
            for p, start in zip(self.loop.model_params, params):
                p.copy_(start)
        self.loop.opt.load_state_dict(opt_state)
        self.loop.schedule_sampler.load_state_dict(self.sampler_state)
        self.loop.noise_gen.set_state(self.noise_state)
        metrics = self.loop.metrics
        metrics.sums.clear(), metrics.counts.clear()
        self.loop.run_step(self.batch, {})
        return torch.tensor([metrics.getkvs()["loss"]])  # the step's loss (the weights' Adam update is ~lr anyway)


def forward_pass(weights, x, t, variant):
    autocast, channels_last, compile_model = VARIANTS[variant]
    model = prepared(testbed_model(weights)[0].eval(), channels_last, compile_model)
    x = layout(x, channels_last)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(x, t).float()
    return run


def max_difference(a, b):
    return float((a - b).abs().max())


def main(argv=None):
    args = parse_args(argv)
    variants = list(dict.fromkeys([REFERENCE, *args.variants]))
    dist_util.setup_dist()  # as the training entry point does (one process; the CPU allocator)
    model, diffusion = testbed_model()
    weights = {k: v.float() for k, v in read_state_dict(str(WEIGHTS)).items()}
    size = model.image_size
    gen = torch.Generator().manual_seed(1)
    batch = torch.rand(args.train_batch, 3, size, size, generator=gen) * 2 - 1
    x = torch.randn(args.forward_batch, 3, size, size, generator=gen)
    t = torch.randint(0, diffusion.num_timesteps, (args.forward_batch,), generator=gen)
    with tempfile.TemporaryDirectory() as run_dir:
        methods = {("train", v): TrainStep(weights, batch, v, run_dir) for v in variants}
        methods.update({("forward", v): forward_pass(weights, x, t, v) for v in variants})
        seconds, outputs, first = timed(methods, args.warmup, args.repeats)
    images = {"train": args.train_batch, "forward": args.forward_batch}

    print(f"Fashion-MNIST testbed model ({MODEL_CONFIG.relative_to(ROOT)}), CPU: torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; train step batch {args.train_batch} (AdamW, EMA), forward batch "
          f"{args.forward_batch}; weights {WEIGHTS.relative_to(ROOT)}; median of {args.repeats} rounds after "
          f"{args.warmup} warm-up\n")
    print(f"| task | variant | images/s | vs {REFERENCE} | first call, s | max abs diff vs {REFERENCE} |")
    print("|---|---|---:|---:|---:|---:|")
    for task in ("train", "forward"):
        reference = images[task] / seconds[task, REFERENCE]
        for variant in variants:
            speed = images[task] / seconds[task, variant]
            diff = max_difference(outputs[task, variant], outputs[task, REFERENCE])
            # first call to three significant digits: a tiny batch's can take well under 0.05 s on a fast machine
            print(f"| {task} | {variant} | {speed:.1f} | {speed / reference:.2f}x | {first[task, variant]:.3g} "
                  f"| {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

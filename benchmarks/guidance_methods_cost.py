"""What each guidance method costs per sampling step on the Fashion-MNIST testbed, side by side.

For every method file of configs/fashion32/methods/ (stacked on the testbed's unconditional or conditional
model, as its Table 1 and comparison rows are) and for unguided sampling of each model:
  rows/image/step   predictions the networks return per image and step (hooks on the diffusion model, the
                    weak model and the classifier): 1 unguided, 2 for PAG (its perturbed copy), 3 for CFG + PAG
  calls/step        network calls per step: PAG's copy and CFG's null pass ride in the main call (1), while
                    SAG's degraded input, autoguidance's weak model and the classifier need calls of their own
  s/image/step      median wall time (methods interleaved round by round, so machine load hits all alike)
  vs unguided       against unguided sampling of the same model in the same run

    python benchmarks/guidance_methods_cost.py                       # every method, 20 images, DDIM-5
    python benchmarks/guidance_methods_cost.py --methods pag seg --batch 4 --steps 2

Methods whose files are missing (a weak model not yet trained, a checkpoint without the null label CFG needs)
are listed with the reason instead of a time. A PAG copy runs the layers before its first perturbed block
once, so its time ratio stays below its row ratio.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from timing import device_sync, timed  # benchmarks/timing.py, beside this script

from guided_diffusion.cli.flags import parse
from guided_diffusion.model.attention import unwrap
from guided_diffusion.sampling.images import sample_images
from guided_diffusion.sampling.run import create_sampler_parser, load_networks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fashion32"
MODELS = {"uncond": CONFIGS / "uncond.yaml", "cond": CONFIGS / "cond.yaml"}
METHODS = {  # method file -> the model it guides (its comparison or Table 1 rows)
    "pag": "uncond", "sag": "uncond", "seg": "uncond", "apg_pag": "uncond", "auto": "uncond",
    "auto_small": "uncond", "cfg": "cond", "cfg_pag": "cond", "apg_cfg": "cond", "auto_cond": "cond", "cg": "cond",
}


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="method files of configs/fashion32/methods/ to time")
    parser.add_argument("--batch", type=int, default=20, help="images per timed sampling call")
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps per call (the cost per step is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to sample (default: the GPU where there is one)")
    return parser


def sampler_args(files, steps):
    argv = [arg for path in files for arg in ("--config", str(path))]
    argv += ["--timestep_respacing", f"ddim{steps}", "--use_ddim", "True", "--precision", "autocast-bf16"]
    return parse(create_sampler_parser(None), argv)


class RowCounter:
    """Counts the calls of the networks and the predictions they return (forward hooks on each network's
    innermost module): a PAG copy enters the U-Net with its image and leaves it as a row of its own."""

    def __init__(self, networks):
        self.rows = self.calls = 0
        self.handles = [unwrap(n).register_forward_hook(self._count) for n in networks]

    def _count(self, module, inputs, output):
        self.calls += 1
        self.rows += (output[0] if isinstance(output, tuple) else output).shape[0]  # (prediction, maps) for SAG


def networks_of(model, guidance):
    """The diffusion model and the extra networks a guidance evaluates (weak model, classifier)."""
    return [model, *(getattr(g, g.network_field) for g in guidance if getattr(g, "network_field", None))]


def sampling_call(args, batch, device):
    """A zero-argument call that samples `batch` images with these flags on `device`, and its row counter."""
    model, diffusion, guidance = load_networks(args, device)
    counter = RowCounter(networks_of(model, guidance))
    indices = np.arange(batch)
    labels = (indices % args.num_classes) if args.class_cond else None

    def call():
        return sample_images(model, diffusion, indices, seed=0, image_size=args.image_size, labels=labels,
                             use_ddim=True, guidance=guidance, device=device)

    return call, counter


def main(argv=None):
    args = create_argparser().parse_args(argv)
    rows, calls, counters, skipped = {}, {}, {}, {}
    for name in dict.fromkeys([f"unguided ({METHODS[m]})" for m in args.methods] + args.methods):
        model_name = name[len("unguided ("):-1] if name.startswith("unguided") else METHODS[name]
        files = [MODELS[model_name]] + ([] if name.startswith("unguided") else [CONFIGS / "methods" / f"{name}.yaml"])
        try:
            calls[name], counters[name] = sampling_call(sampler_args(files, args.steps), args.batch, args.device)
        except (OSError, ValueError) as error:  # a weak model or a null label this checkout does not have yet
            skipped[name] = " ".join(str(error).split())[:160]
        rows[name] = model_name
    seconds, _, _ = timed(calls, args.warmup, args.repeats, sync=device_sync(args.device))
    calls_made = args.warmup + args.repeats
    print(f"Cost per sampling step on the testbed ({args.device}, batch {args.batch}, DDIM-{args.steps}, "
          f"bf16 autocast, median of {args.repeats} interleaved rounds):\n")
    print("| method | model | rows/image/step | calls/step | s/image/step | vs unguided |")
    print("|---|---|---:|---:|---:|---:|")
    for name, model_name in rows.items():
        if name in skipped:
            print(f"| {name} | {model_name} | — | — | — | not measured: {skipped[name]} |")
            continue
        per_step = seconds[name] / (args.batch * args.steps)
        network_rows = counters[name].rows / (calls_made * args.batch * args.steps)
        network_calls = counters[name].calls / (calls_made * args.steps)
        base = seconds.get(f"unguided ({model_name})")
        ratio = f"{seconds[name] / base:.2f}x" if base else "—"
        print(f"| {name} | {model_name} | {network_rows:.2f} | {network_calls:.2f} | {per_step:.3g} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

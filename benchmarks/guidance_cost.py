"""Cost of one PAG sampling step against an unguided step, on the ADM ImageNet-256 topology.

Prints, from one run (methods interleaved so machine load hits all alike):
  unguided           one forward pass of B images
  PAG, two passes    a normal and a perturbed forward pass, one after the other (the official code's way)
  PAG, ours          one batched pass; layers before the first perturbed block run once, perturbed blocks
                     compute V alone
  FLOP limit         1 + the FLOP share of the network from the first perturbed block on

Random weights; `--num_channels` shrinks the width, which keeps every layer's FLOP share.
Defaults: the released width 256 and batch 4 on a GPU; width 64 and batch 2 on a CPU. `--plain_api` measures
a fresh process that uses the library as a notebook would (no entry point), with the library's default CPU
allocator setting and opted out of it, side by side.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from timing import device_sync  # benchmarks/timing.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from guided_diffusion.guidance import OFFICIAL_PAG_LAYERS_256, PerturbedAttentionGuidance
from guided_diffusion.model.attention import AttentionPlan
from guided_diffusion.runtime import cpu_allocator
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults


def adm256_flags(num_channels):
    flags = model_and_diffusion_defaults()
    flags.update(attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, image_size=256,
                 learn_sigma=True, noise_schedule="linear", num_channels=num_channels, num_head_channels=64,
                 num_res_blocks=2, resblock_updown=True, use_scale_shift_norm=True, timestep_respacing="250")
    return flags


def walk_order(model):
    """Layer names in the order the forward pass runs them."""
    names = ["time_embed"]
    for i, block in enumerate(model.input_blocks):
        names += [f"input_blocks.{i}.{j}" for j in range(len(block))]
    names += [f"middle_block.{j}" for j in range(len(model.middle_block))]
    for i, block in enumerate(model.output_blocks):
        names += [f"output_blocks.{i}.{j}" for j in range(len(block))]
    return names + ["out"]


def flop_limit(model, x, t, layers):
    """1 + FLOP share of everything from the first perturbed block on."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    per_module = {name.removeprefix(f"{type(model).__name__}."): sum(ops.values())
                  for name, ops in counter.get_flop_counts().items()}
    total = counter.get_total_flops()
    order = walk_order(model)
    first = min(order.index(name) for name in layers)
    prefix = sum(per_module.get(name, 0) for name in order[:first])
    return 1 + (total - prefix) / total, total


def count_flops(fn):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_channels", type=int, help="U-Net width (default: 256, the released ADM-256, on a "
                                                              "GPU; 64 on a CPU, where 256 takes ~15 s a step)")
    parser.add_argument("--batch_size", type=int, help="images per step (default: 4 on a GPU, 2 on a CPU)")
    parser.add_argument("--repeats", type=int, help="timed steps per method, median reported (default: 10 on a "
                                                   "GPU, 5 on a CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds of every method first")
    parser.add_argument("--layers", nargs="+", default=list(OFFICIAL_PAG_LAYERS_256),
                        help="perturbed attention blocks (default: the official ImageNet-256 set)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--use_fp16", action="store_true", help="the release's fp16 conversion (GPU)")
    parser.add_argument("--glibc_default_malloc", action="store_true",
                        help="CPU: keep glibc's default of returning large freed blocks to the kernel (sets "
                             f"{cpu_allocator.OPT_OUT}=1; see guided_diffusion/runtime/cpu_allocator.py)")
    parser.add_argument("--plain_api", action="store_true",
                        help="CPU: measure the plain Python API (a fresh process that imports the library and "
                             "samples, no entry point) twice, with the library's default and with "
                             f"{cpu_allocator.OPT_OUT}=1, and print both side by side")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one --plain_api process
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.num_channels = args.num_channels or (256 if on_gpu else 64)
    args.batch_size = args.batch_size or (4 if on_gpu else 2)
    args.repeats = args.repeats or (10 if on_gpu else 5)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.plain_api:
        return compare_plain_api(args)
    if args.glibc_default_malloc:
        os.environ[cpu_allocator.OPT_OUT] = "1"  # before the first forward pass, which would apply the setting
    elif args.device == "cpu" and not args.worker:
        cpu_allocator.use_on_cpu()  # as the CPU entry points do, before any large allocation
    result = measure(args)
    if args.worker:
        print(json.dumps(result))
        return 0
    print(f"{result['setup']}\n")
    print("| method | ms / step | time vs unguided | FLOPs vs unguided |")
    print("|---|---:|---:|---:|")
    base = result["seconds"]["unguided"]
    for name, seconds in result["seconds"].items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.3f}x | {result['flops'][name]:.3f}x |")
    print(f"| FLOP limit (1 + share from the first perturbed block) | | {result['limit']:.3f}x | "
          f"{result['limit']:.3f}x |")
    return 0


def compare_plain_api(args):
    """Run the measurement in two fresh processes that use the library as a user's script would: with the
    library's default allocator setting, and opted out of it; print both side by side."""
    if args.device != "cpu":
        raise SystemExit("--plain_api measures the CPU allocator setting: use it with --device cpu")
    flags = ["--worker", "--device", "cpu", "--num_channels", str(args.num_channels), "--batch_size",
             str(args.batch_size), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
             "--layers", *args.layers]
    runs = {}
    for label, extra_env in (("library default", {}), (f"{cpu_allocator.OPT_OUT}=1", {cpu_allocator.OPT_OUT: "1"})):
        env = {k: v for k, v in os.environ.items() if k != cpu_allocator.OPT_OUT}
        env.update(extra_env)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *flags], env=env, capture_output=True,
                             text=True, check=True)
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
    first = next(iter(runs.values()))
    print(f"plain Python API in a fresh process (no entry point); {first['setup']}\n")
    print("| method | " + " | ".join(f"{label}: ms / step | vs unguided" for label in runs) + " |")
    print("|---|" + "---:|---:|" * len(runs))
    for name in first["seconds"]:
        cells = []
        for result in runs.values():
            seconds, base = result["seconds"][name], result["seconds"]["unguided"]
            cells.append(f"{seconds * 1e3:.1f} | {seconds / base:.3f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| FLOP limit | " + " | ".join(f"| {r['limit']:.3f}x" for r in runs.values()) + " |")
    print("\nallocator setting in effect: " + ", ".join(f"{label}: {r['allocator']}" for label, r in runs.items()))
    return 0


def measure(args):
    """Median seconds per step of each method, FLOP ratios and the FLOP limit (one process)."""
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**adm256_flags(args.num_channels))
    model.to(args.device).eval()
    if args.use_fp16:
        model.convert_to_fp16()
    x = torch.randn(args.batch_size, 3, 256, 256, device=args.device)
    t = torch.full((args.batch_size,), 100, device=args.device)
    denoiser = GuidedDenoiser(diffusion, model, PerturbedAttentionGuidance(scale=3.0, layers=args.layers))
    perturbed = AttentionPlan.from_names(model, [args.layers])

    def unguided():
        return diffusion.p_mean_variance(model, x, t)

    def two_passes():
        eps, var = diffusion.split_output(diffusion.run_model(model, x, t), x)
        eps_perturbed, _ = diffusion.split_output(diffusion.run_model(model, x, t, attention=perturbed), x)
        return diffusion.prediction_from_output(eps + 3.0 * (eps - eps_perturbed), var, x, t)

    def ours():  # the sampler's guided prediction, bound once as a sampling run binds it
        return denoiser(x, t)

    methods = {"unguided": unguided, "PAG, two passes": two_passes, "PAG, ours (batched, shared prefix)": ours}
    times = {name: [] for name in methods}
    sync = device_sync(args.device)
    with torch.inference_mode():
        for _ in range(args.warmup):  # until the allocator's pools (or the CPU heap) stop growing
            for fn in methods.values():
                fn()
        for _ in range(args.repeats):
            for name, fn in methods.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)

    limit, total = flop_limit(model, x, t, args.layers)
    base_flops = count_flops(unguided)
    allocator = "freed memory kept for reuse" if cpu_allocator.in_effect() else "glibc default malloc"
    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"CPU ({torch.get_num_threads()} threads, {allocator})")
    return {
        "setup": f"ADM-256 topology, num_channels {args.num_channels}, batch {args.batch_size}, {device}, "
                 f"{total / args.batch_size / 1e9:.1f} GFLOP per image forward; layers {' '.join(args.layers)}",
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "flops": {name: count_flops(fn) / base_flops for name, fn in methods.items()},
        "limit": limit, "allocator": allocator,
    }


if __name__ == "__main__":
    raise SystemExit(main())

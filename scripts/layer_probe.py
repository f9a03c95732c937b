"""Layer probe: how much does the identity attention map of each block move the noise prediction, and where?

For every attention block and a few noise levels, held-out images are noised and the model predicts the
noise with and without that block's attention map replaced by the identity (PAG's perturbation). Writes a
Markdown table, a JSON file and (with matplotlib) a PNG to --output_dir; see guided_diffusion/layer_probe.py.

    pag-layer-probe                                      # the shipped digits model on the held-out digits
    python -m scripts.layer_probe --config configs/digits/model.yaml \\
        --model_path checkpoints/digits_adm16_ema.pt --data digits:heldout --timesteps 50,250,500,750,950

Without --config the digits model's config (configs/digits/model.yaml) is read first.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.config import HelpFormatter, add_flags, parse_args
from guided_diffusion.cpu_allocator import reuse_freed_memory
from guided_diffusion.image_datasets import open_dataset, to_model_range
from guided_diffusion.layer_probe import DEFAULT_TIMESTEPS, markdown_table, plot, probe_layers
from guided_diffusion.script_util import model_and_diffusion_defaults

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "model.yaml"

PROBE_DEFAULTS = dict(model_path=str(ROOT / "checkpoints" / "digits_adm16_ema.pt"), data="digits:heldout",
                      num_images=100, timesteps=",".join(map(str, DEFAULT_TIMESTEPS)), layers=[], seed=0,
                      batch_size=300, precision="", output_dir="outputs/layer_probe")
PROBE_HELP = dict(
    model_path="diffusion checkpoint",
    data="held-out images: an .npz (arr_0 uint8 NHWC), an image folder, or digits:heldout",
    num_images="images to probe, the first of --data (0: all; 100 keeps the digits probe under a minute on 2 cores)",
    timesteps="comma-separated base-process timesteps (0 = clean, T-1 = pure noise)",
    layers="attention blocks to probe (default: all)",
    seed="seed of the noise (timestep t uses seed + t)",
    batch_size="images per forward pass",
    precision="fp32, fp16, autocast-bf16 or autocast-fp16 (empty: from --use_fp16)",
    output_dir="folder for layer_probe.md, layer_probe.json and layer_probe.png",
)


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", action="append", default=[], metavar="FILE.yaml", help="YAML file of flag values")
    add_flags(parser.add_argument_group("probe"), PROBE_DEFAULTS, PROBE_HELP)
    add_flags(parser.add_argument_group("model (the ADM release's flags)"), model_and_diffusion_defaults())
    return parser


def parse_timesteps(text):
    try:
        steps = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--timesteps must be comma-separated integers, got {text!r}") from None
    if not steps:
        raise ValueError("--timesteps is empty")
    return steps


def load_images(args):
    dataset = open_dataset(args.data, args.image_size, class_cond=args.class_cond)
    count = len(dataset) if args.num_images <= 0 else min(args.num_images, len(dataset))
    rng = np.random.default_rng(0)
    images = np.stack([dataset.image(i, rng) for i in range(count)])
    labels = None
    if args.class_cond:
        labels = torch.tensor([dataset.label(i) for i in range(count)])
    return to_model_range(images), labels


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DIGITS_CONFIG)] + argv
    args = parse_args(create_argparser(), argv)
    timesteps = parse_timesteps(args.timesteps)
    args.timestep_respacing = ""  # the probe works on the base process: t is a step of all diffusion_steps

    from scripts.image_sample import load_model  # the sampler's loader: precision flags and strict checks

    reuse_freed_memory()
    start = time.time()
    model, diffusion = load_model(args, torch.device("cpu"))
    images, labels = load_images(args)
    probe = probe_layers(model, diffusion, images, timesteps, args.layers or None, seed=args.seed,
                         batch_size=args.batch_size, model_kwargs={"y": labels} if labels is not None else None)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(probe)
    caption = (f"Movement = mean over {images.shape[0]} images of ||eps - eps_perturbed|| / ||eps|| with the block's "
               "attention map replaced by the identity; ρ = Spearman correlation, over the images, between that "
               "movement and the model's eps-MSE on the same noised image.\n")
    (out / "layer_probe.md").write_text(table + "\n" + caption)
    (out / "layer_probe.json").write_text(json.dumps({**probe.to_dict(), "model_path": args.model_path,
                                                       "data": args.data, "seed": args.seed}, indent=2))
    picture = plot(probe, out / "layer_probe.png")
    print(table)
    print(caption)
    print(f"{time.time() - start:.1f} s; wrote {out / 'layer_probe.md'}, {out / 'layer_probe.json'}"
          + (f", {picture}" if picture else " (no plot: pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

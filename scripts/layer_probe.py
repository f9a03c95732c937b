"""Layer probe: how much does the identity attention map of each block move the noise prediction, and where?

For every attention block and a few noise levels, held-out images are noised and the model predicts the
noise with and without that block's attention map replaced by the identity (PAG's perturbation). Writes a
Markdown table, a JSON file and (with matplotlib) a PNG to --output_dir; see guided_diffusion/sampling/layer_probe.py.

    pag-layer-probe                                      # the shipped digits model on the held-out digits
    python -m scripts.layer_probe --config configs/digits/model.yaml \\
        --model_path checkpoints/digits_adm16_ema.pt --data digits:heldout --timesteps 50,250,500,750,950

Without --config the digits model's config (configs/digits/model.yaml) is read first.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from guided_diffusion.cli.flags import Flag, FlagGroup, create_parser, parse
from guided_diffusion.data.datasets import open_dataset, to_model_range
from guided_diffusion.runtime.cpu_allocator import reuse_freed_memory
from guided_diffusion.sampling.images import BATCH_SIZE, MODEL_FLAGS, MODEL_PATH, PRECISION, load_model
from guided_diffusion.sampling.layer_probe import DEFAULT_TIMESTEPS, markdown_table, plot, probe_layers

ROOT = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = ROOT / "configs" / "digits" / "model.yaml"

PROBE_FLAGS = FlagGroup("probe", [
    MODEL_PATH.but(default=str(ROOT / "checkpoints" / "digits_adm16_ema.pt"), help="diffusion checkpoint"),
    Flag("data", "digits:heldout", "held-out images: an .npz (arr_0 uint8 NHWC), an image folder, or digits:heldout"),
    Flag("num_images", 100, "images to probe, the first of --data (0: all; 100 keeps the digits probe under a "
                            "minute on 2 cores)"),
    Flag("timesteps", ",".join(map(str, DEFAULT_TIMESTEPS)),
         "comma-separated base-process timesteps (0 = clean, T-1 = pure noise)"),
    Flag("layers", [], "attention blocks to probe (default: all)"),
    Flag("seed", 0, "seed of the noise (timestep t uses seed + t)"),
    BATCH_SIZE.but(default=300, help="images per forward pass"),
    PRECISION,
    Flag("output_dir", "outputs/layer_probe", "folder for layer_probe.md, layer_probe.json and layer_probe.png"),
])


def create_argparser():
    return create_parser(__doc__, [PROBE_FLAGS, MODEL_FLAGS])


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
    args = parse(create_argparser(), argv)
    timesteps = parse_timesteps(args.timesteps)
    args.timestep_respacing = ""  # the probe works on the base process: t is a step of all diffusion_steps

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

"""Solve inverse problems (inpainting, deblurring, super-resolution) with an ADM model by DPS, with or
without PAG / SAG.

For each input image x: the measurement y = A x + sigma_y * n, then a DPS posterior sample x_hat
(`guided_diffusion.inverse.dps`). Image i's measurement noise, x_T and step noise come from (--seed, i)
alone, so the results do not depend on --batch_size. Masks are fixed by --operator_seed (default --seed)
and the same for every image.

Inputs (--data): a folder of images (png/jpg/..., searched recursively, sorted), an .npz with `arr_0`
uint8 [N, H, W, C], or `digits:heldout` / `digits:train` (the scikit-learn digits). Images that are not
--image_size square are resized and centre-cropped as for training.

Outputs in --output_dir:
  measurements.png, reconstructions.png, ground_truth.png   grids (measurements shown as images:
                                                            masked, blurred, or upsampled by repetition)
  results.npz      arr_0: reconstructions uint8 [N, H, W, 3] (the evaluator's format), ground_truth uint8,
                   measurement_image uint8, measurement float32 (the raw y, NCHW, model range), indices
  metrics.json     PSNR / SSIM / GMSD (and LPIPS if installed) per image and mean, for the reconstructions
                   and for the degraded input; the measurement residual ||y - A x|| of both; FID with
                   --ref_batch; the configuration

Example (the demo digits model):

    python scripts/inverse_sample.py --config configs/digits/model.yaml \
        --model_path checkpoints/digits_adm16_ema.pt --data digits:heldout --num_images 16 \
        --operator inpaint_box --mask_size 8 --timestep_respacing ddim25 --use_ddim True --zeta 2.0 \
        --residual_x0 raw --pag_scale 3.0 --pag_layers input_blocks.5.1 middle_block.1 --output_dir results/digits_box
"""

import json
import os
import sys
import time

import numpy as np

from guided_diffusion.cli.flags import Flag, FlagGroup, check_flags, create_parser, required
from guided_diffusion.cli.flags import parse as parse_flags
from guided_diffusion.data.datasets import open_dataset
from guided_diffusion.data.image_io import save_image_grid
from guided_diffusion.guidance import describe, guidance_flags, guidance_from_flags, network_free_methods
from guided_diffusion.guidance import validate as validate_guidance
from guided_diffusion.inverse.restore import DPS_FLAGS, OPERATOR_FLAGS, build_operator, quality_report, restore
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.sampling.images import BATCH_SIZE, MODEL_FLAGS, MODEL_PATH, PRECISION, load_model


def _unconditional(flag, value, args):
    return "class-conditional models are not supported here: use an unconditional model" if value else None


RUN_FLAGS = FlagGroup("run", [
    MODEL_PATH,
    Flag("data", "", "image folder, .npz (arr_0 uint8 NHWC) or digits:heldout", required),
    Flag("num_images", 0, "use the first N images (0 = all)",
         lambda flag, value, args: None if value >= 0 else f"{flag} must be >= 0 (0 = all)"),
    BATCH_SIZE.but(default=4, help="images per batch (does not change the results)"),
    Flag("seed", 0, "base seed: image i's measurement noise and sampling noise come from (seed, i)"),
    Flag("output_dir", "inverse_results", "folder for the grids, results.npz and metrics.json"),
    Flag("progress", True, "show progress bars"),
    Flag("ref_batch", "", "reference .npz for FID of the reconstructions (evaluations.evaluator; optional)"),
    PRECISION,
])
MODEL_FLAGS_UNCONDITIONAL = MODEL_FLAGS.replace(MODEL_FLAGS["class_cond"].but(check=_unconditional))
FLAG_GROUPS = (RUN_FLAGS, OPERATOR_FLAGS, DPS_FLAGS, guidance_flags(network_free_methods()),
               MODEL_FLAGS_UNCONDITIONAL)


def create_argparser():
    return create_parser(__doc__, FLAG_GROUPS)


def main(argv=None):
    """Console entry point: exit status 0, or SystemExit with the problem (status 1)."""
    args = parse(argv)
    try:
        run(args)
    except (ValueError, OSError) as error:  # bad flags or data, unreadable checkpoints
        raise SystemExit(f"error: {error}") from None
    return 0


def parse(argv=None):
    """The flags of `argv` (default: the command line), with the command line itself recorded as `argv`."""
    args = parse_flags(create_argparser(), argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def load_images(args):
    dataset = open_dataset(args.data, args.image_size)
    count = len(dataset) if args.num_images == 0 else args.num_images
    if count > len(dataset):
        raise SystemExit(f"error: --num_images {count} but {args.data} has {len(dataset)} images")
    rng = np.random.default_rng(0)  # unused by centre crops
    return np.stack([dataset.image(i, rng) for i in range(count)])


def run(args):
    """Restore the images with parsed flags; returns the metrics report (also written to metrics.json)."""
    try:
        check_flags(args, FLAG_GROUPS)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    device = dist_util.dev()
    operator = build_operator(args)
    guidance = guidance_from_flags(args)
    images = load_images(args)  # uint8 NHWC
    model, diffusion = load_model(args, device)
    validate_guidance(guidance, model)
    os.makedirs(args.output_dir, exist_ok=True)

    started = time.time()
    restoration = restore(args, model, diffusion, operator, guidance, images, device)
    seconds = time.time() - started

    save_image_grid(restoration.degraded, os.path.join(args.output_dir, "measurements.png"))
    save_image_grid(restoration.reconstructions, os.path.join(args.output_dir, "reconstructions.png"))
    save_image_grid(images, os.path.join(args.output_dir, "ground_truth.png"))
    npz_path = os.path.join(args.output_dir, "results.npz")
    np.savez(npz_path, arr_0=restoration.reconstructions, ground_truth=images,
             measurement_image=restoration.degraded, measurement=restoration.measurements,
             indices=np.arange(len(images)))

    report = {
        **quality_report(restoration, images, operator, args.sigma_y),
        "num_images": int(len(images)),
        "seconds": seconds,
        "config": {"operator": operator.describe(), **DPS_FLAGS.values(args), "seed": args.seed,
                   "guidance": describe(guidance), "data": args.data,
                   "model_path": os.path.abspath(args.model_path), "model": MODEL_FLAGS.values(args)},
        "argv": getattr(args, "argv", None),
    }
    if args.ref_batch:
        report["fid"] = compute_fid(args.ref_batch, npz_path)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    if args.progress:
        rec, deg = report["reconstruction"], report["degraded_input"]
        print(f"{len(images)} images: PSNR {rec['psnr']['mean']:.2f} dB (degraded input "
              f"{deg['psnr']['mean']:.2f}), SSIM {rec['ssim']['mean']:.4f} ({deg['ssim']['mean']:.4f}); "
              f"wrote {args.output_dir}")
    return report


def compute_fid(ref_batch, sample_npz):
    from evaluations.evaluator import Evaluator  # optional: needs the Inception graph

    return Evaluator(progress=False).evaluate(ref_batch, sample_npz).get("fid")


if __name__ == "__main__":
    raise SystemExit(main())

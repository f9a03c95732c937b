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

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from guided_diffusion import dist_util
from guided_diffusion.config import add_flags, parse_args
from guided_diffusion.guidance import validate as validate_guidance
from guided_diffusion.guidance_flags import GUIDANCE_DEFAULTS, GUIDANCE_HELP, attention_guidance, scale_flag_problems
from guided_diffusion.image_datasets import open_dataset, to_model_range
from guided_diffusion.image_io import save_image_grid, to_uint8
from guided_diffusion.inverse import metrics
from guided_diffusion.inverse.dps import dps_sample_loop, measurement_residual
from guided_diffusion.inverse.operators import OPERATOR_NAMES, PADDINGS, create_operator
from guided_diffusion.scales import check_scale
from guided_diffusion.script_util import model_and_diffusion_defaults
from guided_diffusion.seeding import MEASUREMENT_STREAM, ImageNoise, image_noise_seed
from scripts.image_sample import SAMPLE_HELP, batch_invariant_fit, batches, load_model, precision

RUN_DEFAULTS = dict(model_path="", data="", num_images=0, batch_size=4, seed=0, output_dir="inverse_results",
                    progress=True, ref_batch="", precision="")
RUN_HELP = dict(
    model_path="diffusion model checkpoint (e.g. models/256x256_diffusion_uncond.pt)",
    data="image folder, .npz (arr_0 uint8 NHWC) or digits:heldout",
    num_images="use the first N images (0 = all)",
    batch_size="images per batch (does not change the results)",
    seed="base seed: image i's measurement noise and sampling noise come from (seed, i)",
    output_dir="folder for the grids, results.npz and metrics.json",
    progress="show progress bars",
    ref_batch="reference .npz for FID of the reconstructions (evaluations.evaluator; optional)",
    precision=SAMPLE_HELP["precision"],
)
DPS_DEFAULTS = dict(sigma_y=0.05, zeta=1.0, use_ddim=False, eta=0.0, clip_denoised=True, residual_x0="clipped")
DPS_HELP = dict(
    sigma_y="measurement noise std in the model's [-1, 1] units (DPS: 0.05)",
    zeta="DPS step size: x_{t-1} -= zeta * grad ||y - A x0_hat|| (tune per task; DPS used 0.3-1.0; any finite "
         "value, 0 = no data consistency)",
    use_ddim="DDIM steps instead of DDPM steps (use with --timestep_respacing ddimN)",
    eta="DDIM eta",
    clip_denoised="clamp the x0 prediction to [-1, 1] in every step (as ADM and DPS)",
    residual_x0="the x0 prediction the residual ||y - A x0_hat|| uses: 'clipped' (after the clamp, as the "
                "official DPS code) or 'raw' (before it: the gradient never vanishes where predictions saturate; "
                "better for the digits demo model)",
)
GUIDANCE_KEYS = [k for k in GUIDANCE_DEFAULTS if k.startswith(("pag_", "sag_"))]


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values; command-line flags override it")
    add_flags(parser.add_argument_group("run"), RUN_DEFAULTS, RUN_HELP)
    group = parser.add_argument_group("degradation (unset parameters: DPS's 256-pixel settings scaled to "
                                      "--image_size)")
    group.add_argument("--operator", default="inpaint_box", choices=OPERATOR_NAMES)
    group.add_argument("--mask_size", type=int, default=None, help="inpaint_box: side of the missing square")
    group.add_argument("--box_position", default="center", choices=("center", "random"),
                       help="inpaint_box: centred, or placed from --operator_seed")
    group.add_argument("--mask_ratio", type=float, default=None, help="inpaint_random: fraction of pixels removed")
    group.add_argument("--blur_sigma", type=float, default=None, help="gaussian_blur: sigma in pixels")
    group.add_argument("--kernel_size", type=int, default=None, help="blurs: odd kernel side")
    group.add_argument("--padding", default="reflect", choices=PADDINGS, help="blurs: border handling")
    group.add_argument("--scale_factor", type=int, default=None, help="super_resolution: pooling factor")
    group.add_argument("--operator_seed", type=int, default=None, help="seed of random masks (default --seed)")
    add_flags(parser.add_argument_group("posterior sampling (DPS)"), DPS_DEFAULTS, DPS_HELP)
    add_flags(parser.add_argument_group("guidance (the PAG paper's s)"),
              {k: GUIDANCE_DEFAULTS[k] for k in GUIDANCE_KEYS}, GUIDANCE_HELP)
    add_flags(parser.add_argument_group("model and diffusion (the ADM release's flags)"),
              model_and_diffusion_defaults())
    return parser


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
    args = parse_args(create_argparser(), argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def check_flags(args):
    problems = []
    if not args.model_path:
        problems.append("--model_path is required")
    if not args.data:
        problems.append("--data is required")
    if args.batch_size < 1:
        problems.append("--batch_size must be at least 1")
    if args.num_images < 0:
        problems.append("--num_images must be >= 0 (0 = all)")
    for flag in ("zeta", "sigma_y"):
        try:
            check_scale(getattr(args, flag), f"--{flag}")
        except ValueError as err:
            problems.append(str(err))
    if args.sigma_y < 0:
        problems.append("--sigma_y must be >= 0")
    problems += scale_flag_problems(args)
    if args.eta and not args.use_ddim:
        problems.append("--eta is a DDIM setting: add --use_ddim True")
    if args.residual_x0 not in ("raw", "clipped"):
        problems.append("--residual_x0 must be 'raw' or 'clipped'")
    if args.class_cond:
        problems.append("class-conditional models are not supported here: use an unconditional model")
    try:
        precision(args)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def load_images(args):
    dataset = open_dataset(args.data, args.image_size)
    count = len(dataset) if args.num_images == 0 else args.num_images
    if count > len(dataset):
        raise SystemExit(f"error: --num_images {count} but {args.data} has {len(dataset)} images")
    rng = np.random.default_rng(0)  # unused by centre crops
    return np.stack([dataset.image(i, rng) for i in range(count)])


def build_operator(args):
    return create_operator(args.operator, args.image_size, mask_size=args.mask_size, mask_ratio=args.mask_ratio,
                           box_position=args.box_position, blur_sigma=args.blur_sigma,
                           kernel_size=args.kernel_size, scale_factor=args.scale_factor, padding=args.padding,
                           seed=args.seed if args.operator_seed is None else args.operator_seed)


def measurement_noise(seed, indices, shape):
    """Standard-normal noise of measurement shape `shape` for each image, from its own stream."""
    draws = []
    for i in indices:
        g = torch.Generator().manual_seed(image_noise_seed(seed, i, MEASUREMENT_STREAM))
        draws.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(draws)


def reconstruct(args, model, diffusion, operator, guidance, x0, indices, device):
    """Measurements and DPS reconstructions for ground-truth batch `x0` (model range) of images `indices`."""
    rows = len(indices)
    fit = batch_invariant_fit(rows, device)  # a batch of one gets the same numbers as in a larger batch
    y_shape = operator.measurement_shape(x0.shape)
    y = operator.measure(fit(x0), args.sigma_y, noise=fit(measurement_noise(args.seed, indices, y_shape[1:])))
    noise = ImageNoise(args.seed, indices, tuple(x0.shape[1:]), device=device)
    x_hat = dps_sample_loop(diffusion, model, operator, y, noise=fit(noise.initial()), zeta=args.zeta,
                            use_ddim=args.use_ddim, eta=args.eta, clip_denoised=args.clip_denoised, device=device,
                            progress=False, guidance=guidance or None, step_noise_fn=lambda i: fit(noise.step(i)),
                            residual_x0=args.residual_x0)
    return y[:rows].cpu(), x_hat[:rows].cpu()


def run(args):
    """Restore the images with parsed flags; returns the metrics report (also written to metrics.json)."""
    check_flags(args)
    device = dist_util.dev()
    operator = build_operator(args)
    guidance = attention_guidance(args)
    images = load_images(args)  # uint8 NHWC
    model, diffusion = load_model(args, device)
    validate_guidance(guidance, model)
    os.makedirs(args.output_dir, exist_ok=True)

    indices = np.arange(len(images))
    recon, measured, raw_y = [], [], []
    residual_recon, residual_input = [], []
    started = time.time()
    bar = tqdm(total=len(indices), unit="img", desc=f"DPS {args.operator}", disable=not args.progress)
    for batch in batches(indices, args.batch_size):
        x0 = to_model_range(images[batch])
        y, x_hat = reconstruct(args, model, diffusion, operator, guidance, x0.to(device), batch, device)
        degraded = operator.to_image(y)
        residual_recon.append(measurement_residual(operator, x_hat.clamp(-1, 1), y))
        residual_input.append(measurement_residual(operator, degraded.clamp(-1, 1), y))
        recon.append(to_uint8(x_hat).numpy())
        measured.append(to_uint8(degraded).numpy())
        raw_y.append(y.numpy().astype(np.float32))
        bar.update(len(batch))
        bar.set_postfix(residual=f"{float(torch.cat(residual_recon).mean()):.3f}")
    bar.close()
    seconds = time.time() - started

    recon, measured, raw_y = np.concatenate(recon), np.concatenate(measured), np.concatenate(raw_y)
    save_image_grid(measured, os.path.join(args.output_dir, "measurements.png"))
    save_image_grid(recon, os.path.join(args.output_dir, "reconstructions.png"))
    save_image_grid(images, os.path.join(args.output_dir, "ground_truth.png"))
    npz_path = os.path.join(args.output_dir, "results.npz")
    np.savez(npz_path, arr_0=recon, ground_truth=images, measurement_image=measured, measurement=raw_y,
             indices=indices)

    truth = metrics.uint8_to_unit(images)
    report = {
        "reconstruction": _summary(metrics.restoration_metrics(metrics.uint8_to_unit(recon), truth)),
        "degraded_input": _summary(metrics.restoration_metrics(metrics.uint8_to_unit(measured), truth,
                                                                with_lpips=False)),
        "measurement_residual": {
            "reconstruction": _stats(torch.cat(residual_recon).tolist()),
            "degraded_input": _stats(torch.cat(residual_input).tolist()),
            "noise_level": noise_level(operator, args.sigma_y, raw_y.shape[1:]),
        },
        "num_images": int(len(images)),
        "seconds": seconds,
        "config": {"operator": operator.describe(), "sigma_y": args.sigma_y, "zeta": args.zeta,
                   "use_ddim": args.use_ddim, "eta": args.eta, "clip_denoised": args.clip_denoised,
                   "residual_x0": args.residual_x0,
                   "seed": args.seed, "guidance": describe_guidance(guidance), "data": args.data,
                   "model_path": os.path.abspath(args.model_path),
                   "model": {k: getattr(args, k) for k in model_and_diffusion_defaults()}},
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


def noise_level(operator, sigma_y, measurement_shape):
    """The expected ||y - A x|| of the true image: sigma_y * sqrt(number of measured entries)."""
    measured = operator.restrict_noise(torch.ones(1, *measurement_shape)).sum()
    return sigma_y * float(measured) ** 0.5


def describe_guidance(items):
    """[{"kind": "PerturbedAttentionGuidance", "scale": ..., ...}, ...] for metrics.json."""
    out = []
    for item in items:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(item).items()}
        out.append({"kind": type(item).__name__, **fields})
    return out


def _stats(values):
    values = [float(v) for v in values]
    finite = [v for v in values if np.isfinite(v)]
    return {"mean": float(np.mean(finite)) if finite else None, "per_image": values}


def _summary(per_metric):
    return {name: _stats(values) for name, values in per_metric.items()}


def compute_fid(ref_batch, sample_npz):
    from evaluations.evaluator import Evaluator  # optional: needs the Inception graph

    result = Evaluator(progress=False).evaluate(ref_batch, sample_npz)
    return result.get("fid")


if __name__ == "__main__":
    raise SystemExit(main())

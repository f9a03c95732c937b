"""Restoring a set of images by DPS: the degradation and DPS flags, per-image measurement noise, the
batched reconstruction, and the metrics report (`scripts/inverse_sample.py` runs them).

Image i's measurement noise, x_T and step noise come from (seed, i) alone, so the results do not depend on
the batch size; masks are drawn from the operator's seed and the same for every image.
"""

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from guided_diffusion.cli.flags import Flag, FlagGroup, all_of, finite
from guided_diffusion.data.datasets import to_model_range
from guided_diffusion.data.image_io import to_uint8
from guided_diffusion.sampling.images import CLIP_DENOISED, ETA, USE_DDIM, batch_invariant_fit, batches
from guided_diffusion.sampling.seeding import MEASUREMENT_STREAM, ImageNoise, image_noise_seed

from . import metrics
from .dps import dps_sample_loop, measurement_residual
from .operators import OPERATOR_NAMES, PADDINGS, create_operator


def _non_negative(flag, value, args):
    return None if value >= 0 else f"{flag} must be >= 0"


def _one_of(*values):
    def check(flag, value, args):
        return None if value in values else f"{flag} must be " + " or ".join(repr(v) for v in values)
    return check


OPERATOR_FLAGS = FlagGroup("degradation (unset parameters: DPS's 256-pixel settings scaled to --image_size)", [
    Flag("operator", "inpaint_box", "the degradation A of y = A x + sigma_y n", choices=OPERATOR_NAMES),
    Flag("mask_size", None, "inpaint_box: side of the missing square", type=int),
    Flag("box_position", "center", "inpaint_box: centred, or placed from --operator_seed",
         choices=("center", "random")),
    Flag("mask_ratio", None, "inpaint_random: fraction of pixels removed", type=float),
    Flag("blur_sigma", None, "gaussian_blur: sigma in pixels", type=float),
    Flag("kernel_size", None, "blurs: odd kernel side", type=int),
    Flag("padding", "reflect", "blurs: border handling", choices=PADDINGS),
    Flag("scale_factor", None, "super_resolution: pooling factor", type=int),
    Flag("operator_seed", None, "seed of random masks (default --seed)", type=int),
])
DPS_FLAGS = FlagGroup("posterior sampling (DPS)", [
    Flag("sigma_y", 0.05, "measurement noise std in the model's [-1, 1] units (DPS: 0.05)",
         all_of(finite, _non_negative)),
    Flag("zeta", 1.0, "DPS step size: x_{t-1} -= zeta * grad ||y - A x0_hat|| (tune per task; DPS used 0.3-1.0; any "
                      "finite value, 0 = no data consistency)", finite),
    USE_DDIM.but(help="DDIM steps instead of DDPM steps (use with --timestep_respacing ddimN)"),
    ETA.but(help="DDIM eta"),
    CLIP_DENOISED.but(help="clamp the x0 prediction to [-1, 1] in every step (as ADM and DPS)"),
    Flag("residual_x0", "clipped", "the x0 prediction the residual ||y - A x0_hat|| uses: 'clipped' (after the "
                                   "clamp, as the official DPS code) or 'raw' (before it: the gradient never vanishes "
                                   "where predictions saturate; better for the digits demo model)",
         _one_of("raw", "clipped")),
])


def build_operator(args):
    """The operator of the degradation flags (masks from --operator_seed, else --seed)."""
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


@dataclasses.dataclass
class Restoration:
    """Every image's reconstruction and degraded input (uint8 NHWC), raw measurement and residuals."""

    reconstructions: np.ndarray
    degraded: np.ndarray
    measurements: np.ndarray
    residual_reconstruction: torch.Tensor
    residual_input: torch.Tensor


def restore(args, model, diffusion, operator, guidance, images, device):
    """Measure and reconstruct uint8 NHWC `images` in batches of --batch_size."""
    recon, measured, raw_y = [], [], []
    residual_recon, residual_input = [], []
    bar = tqdm(total=len(images), unit="img", desc=f"DPS {args.operator}", disable=not args.progress)
    for batch in batches(np.arange(len(images)), args.batch_size):
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
    return Restoration(np.concatenate(recon), np.concatenate(measured), np.concatenate(raw_y),
                       torch.cat(residual_recon), torch.cat(residual_input))


def quality_report(restoration, images, operator, sigma_y):
    """Per-image and mean restoration metrics of the reconstructions and of the degraded input against the
    ground truth `images`, and both measurement residuals next to the noise's own level."""
    truth = metrics.uint8_to_unit(images)
    return {
        "reconstruction": _summary(metrics.restoration_metrics(metrics.uint8_to_unit(restoration.reconstructions),
                                                               truth)),
        "degraded_input": _summary(metrics.restoration_metrics(metrics.uint8_to_unit(restoration.degraded), truth,
                                                                with_lpips=False)),
        "measurement_residual": {
            "reconstruction": _stats(restoration.residual_reconstruction.tolist()),
            "degraded_input": _stats(restoration.residual_input.tolist()),
            "noise_level": noise_level(operator, sigma_y, restoration.measurements.shape[1:]),
        },
    }


def noise_level(operator, sigma_y, measurement_shape):
    """The expected ||y - A x|| of the true image: sigma_y * sqrt(number of measured entries)."""
    measured = operator.restrict_noise(torch.ones(1, *measurement_shape)).sum()
    return sigma_y * float(measured) ** 0.5


def _stats(values):
    values = [float(v) for v in values]
    finite_values = [v for v in values if np.isfinite(v)]
    return {"mean": float(np.mean(finite_values)) if finite_values else None, "per_image": values}


def _summary(per_metric):
    return {name: _stats(values) for name, values in per_metric.items()}

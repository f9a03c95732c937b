"""Diffusion posterior sampling (DPS; Chung et al., ICLR 2023) on ADM diffusions, guidable by PAG and SAG.

Each step runs the sampler's own DDPM or DDIM step (`samplers.DDPM` / `samplers.DDIM`) on x_t with
gradients enabled, so the prediction is exactly the sampler's: with `guidance=` it is the guided
prediction of `denoiser.GuidedDenoiser` (guided eps, x0 recomputed from it and clipped, variance of the
normal pass). `DPS` wraps that step in the samplers' one step signature, so the samplers' one loop runs it.
From the step's x0 prediction x0_hat(x_t) it takes the measurement residual ||y - A(x0_hat)|| (one
Euclidean norm per image), differentiates it with respect to x_t through the network, and moves the
step's sample against that gradient:

    x_{t-1} = step(x_t).sample - zeta * grad_{x_t} ||y - A(x0_hat(x_t))||

The gradient of the norm (not of its square) is DPS's step-size normalisation zeta / ||y - A x0_hat||.
Norms are taken per image and summed, so every image gets its own gradient whatever batch it is in (DPS
itself takes one norm over the batch, which is the same for its batches of one).

Clipping: `clip_denoised=True` clamps x0_hat to [-1, 1] inside every step, exactly as the sampler does
(ADM's default, and DPS's configuration). By default (`residual_x0="clipped"`) the residual is taken on
that clamped x0_hat, with the gradient through the clamp (zero for clamped pixels), as the official DPS
code does. `residual_x0="raw"` takes it on the x0 prediction before the clamp, so the gradient never
vanishes where the prediction saturates: on the demo digits model (black backgrounds, saturated
predictions) the clipped residual leaves some images stuck far from their measurements and the raw one
does not; on an untrained model, whose raw predictions are huge at high noise, the raw one diverges.
The returned x_0 is the last step's sample after its data-consistency update, unclipped;
`image_io.to_uint8` clamps it when it is saved.

Guidance: PAG and SAG (any mix) go through the step's guided prediction, so the gradient flows through
the guided x0_hat, perturbed passes included. Classifier guidance is not supported here.

With `zeta=0` the loop is the plain sampler: it returns the same numbers as `p_sample_loop` /
`ddim_sample_loop` given the same noise.
"""

from dataclasses import dataclass
from typing import Any

import torch

from guided_diffusion import guidance as guidance_lib
from guided_diffusion.cli.scales import check_scale
from guided_diffusion.diffusion.schedules import per_row
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.steps import initial_noise, sample_loop, sampler_for


def measurement_residual(operator, x, measurement):
    """||y - A x|| per image ([B]), over all of a measurement's elements."""
    return (measurement - operator.forward(x)).flatten(1).norm(dim=1)


RESIDUAL_X0 = ("raw", "clipped")


def check_guidance(guidance):
    for item in guidance_lib.as_list(guidance):
        if isinstance(item, guidance_lib.ClassifierGuidance):
            raise ValueError("DPS here takes PAG / SAG guidance; classifier guidance is not supported")


@dataclass(frozen=True)
class DPS:
    """A DPS step around a sampler step (`samplers.DDPM` / `samplers.DDIM`), with the samplers' signature.

    `zeta` is DPS's step size: a number, or a [B] tensor of one per image.
    """

    sampler: Any
    operator: Any
    measurement: torch.Tensor
    zeta: Any = 1.0
    residual_x0: str = "clipped"

    def __post_init__(self):
        check_scale(self.zeta, "DPS zeta")
        if self.residual_x0 not in RESIDUAL_X0:
            raise ValueError(f"residual_x0 must be one of {', '.join(RESIDUAL_X0)}, got {self.residual_x0!r}")

    @property
    def stochastic(self):
        return self.sampler.stochastic

    def step(self, denoiser, x, t, noise=None):
        """x_t -> x_{t-1}: {"sample", "pred_xstart", "residual" (per image, before the update)}."""
        # Gradients are enabled here: the sampling loop runs every step under torch.no_grad.
        consistency = bool(torch.as_tensor(self.zeta).ne(0).any())
        x_in = x.detach().requires_grad_(consistency)
        with torch.enable_grad() if consistency else torch.no_grad():
            out = self.sampler.step(denoiser, x_in, t, noise)
            # "raw": the guided x0 prediction before the step's clamp (after denoised_fn)
            x0_hat = out["prediction"]["raw_pred_xstart"] if self.residual_x0 == "raw" else out["pred_xstart"]
            residual = measurement_residual(self.operator, x0_hat, self.measurement)
            sample = out["sample"].detach()
            if consistency:
                (gradient,) = torch.autograd.grad(residual.sum(), x_in)
                sample = sample - _per_image(self.zeta, sample) * gradient
        return {"sample": sample, "pred_xstart": out["pred_xstart"].detach(), "residual": residual.detach()}


def _per_image(zeta, like):
    if isinstance(zeta, torch.Tensor) and zeta.ndim == 1:
        return per_row(zeta.to(like), like)
    return zeta


def dps_step(diffusion, model, x, t, operator, measurement, zeta=1.0, use_ddim=False, eta=0.0, clip_denoised=True,
             denoised_fn=None, model_kwargs=None, guidance=None, step_noise=None, residual_x0="clipped"):
    """One DPS step x_t -> x_{t-1}: {"sample", "pred_xstart", "residual" (per image, before the update)}."""
    check_guidance(guidance)
    dps = DPS(sampler_for(use_ddim, eta), operator, measurement, zeta, residual_x0)
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn)
    return dps.step(denoiser, x, t, step_noise)


def dps_sample_loop(diffusion, model, operator, measurement, shape=None, noise=None, zeta=1.0, use_ddim=False,
                    eta=0.0, clip_denoised=True, denoised_fn=None, model_kwargs=None, device=None, progress=False,
                    guidance=None, step_noise_fn=None, residual_x0="clipped", callback=None):
    """Posterior samples x_0 ([B, C, H, W]) for measurements y = A x + noise; see the module docstring.

    `noise` is x_T (else drawn with `torch.randn(shape)`); `step_noise_fn(i)` gives step i's noise (DDPM,
    or DDIM with eta > 0), so each image can own its random stream. `callback` sees every step as in
    `samplers.sample_loop` (with the step's "residual").
    """
    check_guidance(guidance)
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn)  # unknown layers fail here, before any step
    x = initial_noise(model, shape, noise, device)
    measurement = measurement.to(x.device)
    if measurement.shape[0] != x.shape[0]:
        raise ValueError(f"{measurement.shape[0]} measurements for a batch of {x.shape[0]} images")
    expected = tuple(operator.measurement_shape(tuple(x.shape)))
    if tuple(measurement.shape) != expected:
        raise ValueError(f"measurement of shape {tuple(measurement.shape)}, but {operator.name} gives {expected}")
    dps = DPS(sampler_for(use_ddim, eta), operator, measurement, zeta, residual_x0)
    return sample_loop(denoiser, dps, x, step_noise_fn=step_noise_fn, callback=callback, progress=progress)

"""Diffusion posterior sampling (DPS; Chung et al., ICLR 2023) on ADM diffusions, guidable by PAG and SAG.

Each step runs the diffusion's own DDPM (`p_sample`) or DDIM (`ddim_sample`) step on x_t with gradients
enabled, so the prediction is exactly the sampler's: with `guidance=` it is the guided prediction of
`guidance.guided_prediction` (guided eps, x0 recomputed from it and clipped, variance of the normal pass).
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

import functools

import torch

from .. import guidance as guidance_lib
from ..scales import check_scale


def measurement_residual(operator, x, measurement):
    """||y - A x|| per image ([B]), over all of a measurement's elements."""
    return (measurement - operator.forward(x)).flatten(1).norm(dim=1)


RESIDUAL_X0 = ("raw", "clipped")


def check_guidance(guidance):
    for item in guidance_lib.as_list(guidance):
        if isinstance(item, guidance_lib.ClassifierGuidance):
            raise ValueError("DPS here takes PAG / SAG guidance; classifier guidance is not supported")


def _check_options(guidance, residual_x0, zeta):
    check_scale(zeta, "DPS zeta")
    if residual_x0 not in RESIDUAL_X0:
        raise ValueError(f"residual_x0 must be one of {', '.join(RESIDUAL_X0)}, got {residual_x0!r}")
    check_guidance(guidance)


def dps_step(diffusion, model, x, t, operator, measurement, zeta=1.0, use_ddim=False, eta=0.0, clip_denoised=True,
             denoised_fn=None, model_kwargs=None, guidance=None, step_noise=None, residual_x0="clipped"):
    """One DPS step x_t -> x_{t-1}: {"sample", "pred_xstart", "residual" (per image, before the update)}."""
    _check_options(guidance, residual_x0, zeta)  # cheap; the loop also makes it before its first step
    # Gradients are enabled below: the diffusion's sampling loop runs every step under torch.no_grad.
    consistency = bool(torch.as_tensor(zeta).ne(0).any())
    x_in = x.detach().requires_grad_(consistency)
    raw = {}

    def record_raw(x0):  # the x0 prediction before the step's clamp (the last one made: the guided one)
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        raw["x0"] = x0
        return x0

    step_kwargs = dict(clip_denoised=clip_denoised, denoised_fn=record_raw, model_kwargs=model_kwargs,
                       guidance=guidance, step_noise=step_noise)
    with torch.enable_grad() if consistency else torch.no_grad():
        if use_ddim:
            out = diffusion.ddim_sample(model, x_in, t, eta=eta, **step_kwargs)
        else:
            out = diffusion.p_sample(model, x_in, t, **step_kwargs)
        x0_hat = raw["x0"] if residual_x0 == "raw" else out["pred_xstart"]
        residual = measurement_residual(operator, x0_hat, measurement)
        sample = out["sample"].detach()
        if consistency:
            (gradient,) = torch.autograd.grad(residual.sum(), x_in)
            sample = sample - _per_image(zeta, sample) * gradient
    return {"sample": sample, "pred_xstart": out["pred_xstart"].detach(), "residual": residual.detach()}


def _per_image(zeta, like):
    if isinstance(zeta, torch.Tensor) and zeta.ndim == 1:
        return zeta.to(like).reshape(-1, *([1] * (like.ndim - 1)))
    return zeta


def dps_sample_loop_progressive(diffusion, model, operator, measurement, shape=None, noise=None, zeta=1.0,
                                use_ddim=False, eta=0.0, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                                device=None, progress=False, guidance=None, step_noise_fn=None, residual_x0="clipped"):
    """Yield each DPS step's {"sample", "pred_xstart", "residual", "t"}.

    `noise` is x_T (else drawn with `torch.randn(shape)`); `step_noise_fn(i)` gives step i's noise (DDPM,
    or DDIM with eta > 0), as in the diffusion's own loops, so each image can own its random stream.
    `zeta` is DPS's step size: a number, or a [B] tensor of one per image.
    The steps run in the diffusion's own sampling loop (which also checks the guidance's layers).
    """
    _check_options(guidance, residual_x0, zeta)
    if noise is None and shape is None:
        raise ValueError("give the sample shape or the initial noise x_T")
    if device is None:
        device = next(model.parameters()).device
    batch_shape = tuple(noise.shape if noise is not None else shape)
    measurement = measurement.to(device)
    if measurement.shape[0] != batch_shape[0]:
        raise ValueError(f"{measurement.shape[0]} measurements for a batch of {batch_shape[0]} images")
    expected = tuple(operator.measurement_shape(batch_shape))
    if tuple(measurement.shape) != expected:
        raise ValueError(f"measurement of shape {tuple(measurement.shape)}, but {operator.name} gives {expected}")
    uses_step_noise = not use_ddim or eta != 0
    yield from diffusion._loop(functools.partial(dps_step, diffusion), model, shape, noise, device, progress,
                               step_noise_fn if uses_step_noise else None,
                               dict(operator=operator, measurement=measurement, zeta=zeta, use_ddim=use_ddim, eta=eta,
                                    clip_denoised=clip_denoised, denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                                    guidance=guidance, residual_x0=residual_x0))


def dps_sample_loop(diffusion, model, operator, measurement, shape=None, noise=None, zeta=1.0, use_ddim=False,
                    eta=0.0, clip_denoised=True, denoised_fn=None, model_kwargs=None, device=None, progress=False,
                    guidance=None, step_noise_fn=None, residual_x0="clipped"):
    """Posterior samples x_0 ([B, C, H, W]) for measurements y = A x + noise; see the module docstring."""
    final = None
    for final in dps_sample_loop_progressive(diffusion, model, operator, measurement, shape, noise, zeta, use_ddim,
                                             eta, clip_denoised, denoised_fn, model_kwargs, device, progress,
                                             guidance, step_noise_fn, residual_x0):
        pass
    return final["sample"]

"""Sampler steps and the one sampling loop.

A sampler is a small object with one step signature, `step(denoiser, x, t, noise) -> {"sample",
"pred_xstart", ...}`, and a `stochastic` flag (whether its steps add noise). `DDPM` and `DDIM` are the
release's ancestral and DDIM steps; `inverse.dps.DPS` wraps either of them. `sample_loop` runs any
sampler over every step of a diffusion with a bound `denoiser.GuidedDenoiser`, and observers (the
guidance pictures, DPS residuals, progress) see each step through its `callback`.

Classifier guidance is applied here, after the guided prediction, as in ADM: DDPM shifts the mean by
variance * gradient, DDIM shifts the noise prediction (the score).
"""

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from guided_diffusion.diffusion.schedules import extract_into_tensor, per_row


def step_adds_noise(sampler, t):
    """Whether step `t` adds noise (elementwise for a tensor of step indices): the steps of a stochastic
    sampler do, except the last one (t = 0)."""
    return sampler.stochastic and t != 0


def sampler_for(use_ddim, eta=0.0):
    """The sampler that the `use_ddim` / `eta` flags ask for."""
    return DDIM(eta) if use_ddim else DDPM()


@dataclass(frozen=True)
class DDPM:
    """Ancestral sampling with the model's variance (Ho et al., 2020; Nichol & Dhariwal, 2021)."""

    stochastic = True

    def step(self, denoiser, x, t, noise=None):
        """x_t -> x_{t-1}; `noise` is the Gaussian noise the step adds (drawn if None)."""
        out = denoiser(x, t)
        gradient = denoiser.classifier_gradient(x, t)
        if gradient is not None:
            out = {**out, "mean": out["mean"].float() + out["variance"] * gradient.float()}
        if noise is None:
            noise = torch.randn_like(x)
        adds_noise = per_row(step_adds_noise(self, t).float(), x)
        sample = out["mean"] + adds_noise * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"], "prediction": out}


@dataclass(frozen=True)
class DDIM:
    """DDIM (Song et al., 2021); `eta = 0` is deterministic, `eta = 1` ancestral-like."""

    eta: float = 0.0

    @property
    def stochastic(self):
        return self.eta != 0

    def step(self, denoiser, x, t, noise=None):
        """x_t -> x_{t-1}; `noise` is the Gaussian noise the step adds when eta > 0 (drawn if None)."""
        diffusion = denoiser.diffusion
        out = denoiser(x, t)
        gradient = denoiser.classifier_gradient(x, t)
        if gradient is not None:
            out = _shift_score(diffusion, out, x, t, gradient)
        # eps is re-derived from the (clipped) x_0 prediction, as in the release.
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = extract_into_tensor(diffusion.alphas_cumprod, t, x.shape)
        alpha_bar_prev = extract_into_tensor(diffusion.alphas_cumprod_prev, t, x.shape)
        sigma = (self.eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                 * torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if self.stochastic:
            if noise is None:
                noise = torch.randn_like(x)
            sample = sample + per_row(step_adds_noise(self, t).float(), x) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"], "prediction": out}


def _shift_score(diffusion, out, x, t, gradient):
    """The prediction with its noise estimate moved by the classifier gradient (for DDIM)."""
    alpha_bar = extract_into_tensor(diffusion.alphas_cumprod, t, x.shape)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    eps = eps - (1 - alpha_bar).sqrt() * gradient
    pred_xstart = diffusion.predict_xstart_from_eps(x, t, eps)
    mean, _, _ = diffusion.q_posterior_mean_variance(pred_xstart, x, t)
    return {**out, "pred_xstart": pred_xstart, "mean": mean}


def initial_noise(model, shape=None, noise=None, device=None):
    """x_T on `device` (default: the model's): `noise` if given, else drawn with `torch.randn(shape)`."""
    if noise is None and shape is None:
        raise ValueError("give the sample shape or the initial noise x_T")
    if device is None:
        device = next(model.parameters()).device
    return noise.to(device) if noise is not None else torch.randn(*shape, device=device)


def sample_loop(denoiser, sampler, x, *, step_noise_fn=None, callback=None, progress=False):
    """Run `sampler` from x = x_T through every step of the denoiser's diffusion; returns x_0.

    `step_noise_fn(i)` gives the noise of step i where the step adds noise (else the step draws it from
    the global generator), so each image can own its random stream. `callback(info)` is called after each
    step with the step's output ("sample", "pred_xstart", and what the sampler adds: "prediction", the
    guided prediction with its parts, or DPS's "residual"), "i" (the step index), "t" (the [B] step
    indices) and "x" (the step's input x_t). Steps run under `torch.no_grad` (DPS enables gradients for
    its own).
    """
    indices = range(denoiser.diffusion.num_timesteps - 1, -1, -1)
    for i in tqdm(indices, desc="sampling", leave=False) if progress else indices:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        noise = step_noise_fn(i) if step_noise_fn is not None and step_adds_noise(sampler, i) else None
        with torch.no_grad():
            out = sampler.step(denoiser, x, t, noise)
        if callback is not None:
            callback({**out, "i": i, "t": t, "x": x})
        x = out["sample"]
    return x

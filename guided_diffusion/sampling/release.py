"""The ADM release's sampling methods on its diffusion classes, as thin shims over the library's path.

`GaussianDiffusion` and `SpacedDiffusion` here are the process classes of `diffusion/` plus the release's
`p_mean_variance`, `p_sample`, `ddim_sample`, `ddim_reverse_sample`, `p_sample_loop` and `ddim_sample_loop`,
which bind a `GuidedDenoiser` and run the sampler steps. They also take `guidance=` and the step's noise
(`step_noise=` / `step_noise_fn=`), so each image can own its random stream. The release's import paths
(`guided_diffusion.gaussian_diffusion`, `.respace`, `.script_util`) give these classes; the diffusion
process itself knows nothing of guidance.
"""

import torch

from guided_diffusion.diffusion import process, respace
from guided_diffusion.diffusion.schedules import extract_into_tensor
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.steps import DDIM, DDPM, initial_noise, sample_loop


class ReleaseSampling:
    """The release's sampling API for a diffusion process class."""

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, guidance=None):
        """p(x_{t-1} | x_t): mean, variance, log-variance and the x_0 prediction, optionally guided (plus the
        guided prediction's parts; see `denoiser.GuidedDenoiser`)."""
        return GuidedDenoiser(self, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                              denoised_fn=denoised_fn)(x, t)

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 guidance=None, step_noise=None):
        """One ancestral (DDPM) step x_t -> x_{t-1}. `step_noise` is the Gaussian noise the step adds."""
        denoiser = GuidedDenoiser(self, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                  denoised_fn=denoised_fn, cond_fn=cond_fn)
        return DDPM().step(denoiser, x, t, step_noise)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, guidance=None, step_noise=None):
        """One DDIM step (Song et al., 2021); eta = 1 is ancestral-like, eta = 0 deterministic."""
        denoiser = GuidedDenoiser(self, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                  denoised_fn=denoised_fn, cond_fn=cond_fn)
        return DDIM(eta).step(denoiser, x, t, step_noise)

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """Deterministic DDIM inversion x_t -> x_{t+1}."""
        if eta != 0.0:
            raise ValueError("reverse DDIM is deterministic: use eta=0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, guidance=None, step_noise_fn=None):
        """Sample with DDPM steps; returns the final x_0 batch. `step_noise_fn(i)` gives step i's noise."""
        denoiser = GuidedDenoiser(self, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                  denoised_fn=denoised_fn, cond_fn=cond_fn)  # bad layer names fail here
        return sample_loop(denoiser, DDPM(), initial_noise(model, shape, noise, device),
                           step_noise_fn=step_noise_fn, progress=progress)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, guidance=None, step_noise_fn=None):
        """Sample with DDIM steps; returns the final x_0 batch. `step_noise_fn(i)` gives step i's noise (eta > 0)."""
        denoiser = GuidedDenoiser(self, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                  denoised_fn=denoised_fn, cond_fn=cond_fn)
        return sample_loop(denoiser, DDIM(eta), initial_noise(model, shape, noise, device),
                           step_noise_fn=step_noise_fn, progress=progress)


class GaussianDiffusion(ReleaseSampling, process.GaussianDiffusion):
    """The release's `gaussian_diffusion.GaussianDiffusion`."""


class SpacedDiffusion(ReleaseSampling, respace.SpacedDiffusion):
    """The release's `respace.SpacedDiffusion`."""

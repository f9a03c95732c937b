"""Gaussian diffusion as in ADM (Dhariwal & Nichol, 2021; Nichol & Dhariwal, 2021).

Schedules are held in float64 numpy arrays and gathered per timestep before casting to float32, exactly
as the release does, so its checkpoints sample the same numbers. Every sampling step can be guided: pass
`guidance=` (see `guidance.py`), and the step's noise can be given (`step_noise=`) so each image can own
its random stream.
"""

import enum
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from . import guidance as guidance_lib
from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """The release's beta schedules; `linear` is scaled so any step count spans the same range."""
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(num_diffusion_timesteps,
                                   lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown noise_schedule {schedule_name!r}: use 'linear' or 'cosine'")


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    betas = []
    for i in range(num_diffusion_timesteps):
        t1, t2 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


class ModelMeanType(enum.Enum):
    PREVIOUS_X = enum.auto()  # the model predicts x_{t-1}
    START_X = enum.auto()  # the model predicts x_0
    EPSILON = enum.auto()  # the model predicts the noise


class ModelVarType(enum.Enum):
    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus the VB term rescaled as in the improved-DDPM paper
    KL = enum.auto()
    RESCALED_KL = enum.auto()

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr, timesteps, broadcast_shape):
    """Gather float64 schedule values at `timesteps`, cast to float32 and broadcast."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.reshape(*res.shape, *([1] * (len(broadcast_shape) - res.ndim))).expand(broadcast_shape)


def _nonzero_mask(t, x):
    return (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))


class GaussianDiffusion:
    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0; its log is clipped to the next value.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----------------------------------------------------------------------------------------------
    # Timesteps as the model sees them

    @property
    def timestep_map(self):
        """Base-process timestep of each step index (the identity without respacing)."""
        return np.arange(self.num_timesteps)

    @property
    def original_num_steps(self):
        return self.num_timesteps

    def model_timesteps(self, t):
        """The timesteps to feed the network for step indices `t`."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    def _scale_timesteps(self, t):  # the release's name
        return self.model_timesteps(t)

    def run_model(self, model, x, t, **model_kwargs):
        return model(x, self.model_timesteps(t), **model_kwargs)

    # ----------------------------------------------------------------------------------------------
    # Forward process

    def q_mean_variance(self, x_start, t):
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Sample x_t ~ q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (_extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        mean = (_extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------------------------
    # Reverse process: model output -> mean, variance and x_0

    def split_output(self, model_output, x):
        """(mean part, variance part or None) of a raw model output."""
        channels = x.shape[1]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * channels:
                raise ValueError(f"a learned-sigma diffusion needs {2 * channels} output channels, the model gave "
                                 f"{model_output.shape[1]}: check --learn_sigma")
            return torch.split(model_output, channels, dim=1)
        return model_output, None

    def prediction_from_output(self, mean_output, var_output, x, t, clip_denoised=True, denoised_fn=None):
        """The release's p_mean_variance body, from an already computed (possibly guided) model output."""
        if self.model_var_type == ModelVarType.LEARNED:
            model_log_variance = var_output
            model_variance = torch.exp(model_log_variance)
        elif self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
            frac = (var_output + 1) / 2  # the model outputs [-1, 1]
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                variance = np.append(self.posterior_variance[1], self.betas[1:])
                log_variance = np.log(variance)
            else:
                variance, log_variance = self.posterior_variance, self.posterior_log_variance_clipped
            model_variance = _extract_into_tensor(variance, t, x.shape)
            model_log_variance = _extract_into_tensor(log_variance, t, x.shape)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, mean_output))
            model_mean = mean_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(mean_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, mean_output))
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart}

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, guidance=None,
                        details=None):
        """p(x_{t-1} | x_t): mean, variance, log-variance and the x_0 prediction, optionally guided.

        `details`, if a dict, receives the guided prediction's intermediates (see `guidance.guided_prediction`).
        """
        model_kwargs = model_kwargs or {}
        if guidance is not None or details is not None:
            return guidance_lib.guided_prediction(self, model, x, t, guidance, clip_denoised=clip_denoised,
                                                  denoised_fn=denoised_fn, model_kwargs=model_kwargs,
                                                  details=details)
        mean_output, var_output = self.split_output(self.run_model(model, x, t, **model_kwargs), x)
        return self.prediction_from_output(mean_output, var_output, x, t, clip_denoised, denoised_fn)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (_extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
                - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # ----------------------------------------------------------------------------------------------
    # Classifier guidance (Dhariwal & Nichol, 2021, Sec. 4)

    def _classifier_gradient(self, cond_fn, x, t, model_kwargs):
        return cond_fn(x, self.model_timesteps(t), **model_kwargs)

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Shift the DDPM mean by variance * grad log p(y | x_t)."""
        gradient = self._classifier_gradient(cond_fn, x, t, model_kwargs or {})
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Shift the score (the eps prediction) by the classifier gradient; for DDIM."""
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * self._classifier_gradient(cond_fn, x, t, model_kwargs or {})
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ----------------------------------------------------------------------------------------------
    # Sampling steps

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 guidance=None, step_noise=None, details=None):
        """One ancestral (DDPM) step x_t -> x_{t-1}. `step_noise` is the Gaussian noise the step adds."""
        model_kwargs = model_kwargs or {}
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs, guidance, details)
        cond_fn = guidance_lib.classifier_fn(cond_fn, guidance, self, t)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        noise = torch.randn_like(x) if step_noise is None else step_noise
        sample = out["mean"] + _nonzero_mask(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, guidance=None, step_noise=None, details=None):
        """One DDIM step (Song et al., 2021); eta = 1 is ancestral-like, eta = 0 deterministic."""
        model_kwargs = model_kwargs or {}
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs, guidance, details)
        cond_fn = guidance_lib.classifier_fn(cond_fn, guidance, self, t)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        # eps is re-derived from the (clipped) x_0 prediction, as in the release.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = (eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
                 * torch.sqrt(1 - alpha_bar / alpha_bar_prev))
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        sample = mean_pred
        if eta != 0:
            noise = torch.randn_like(x) if step_noise is None else step_noise
            sample = mean_pred + _nonzero_mask(t, x) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """Deterministic DDIM inversion x_t -> x_{t+1}."""
        if eta != 0.0:
            raise ValueError("reverse DDIM is deterministic: use eta=0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # ----------------------------------------------------------------------------------------------
    # Sampling loops

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, guidance=None, step_noise_fn=None):
        """Sample with DDPM steps; returns the final x_0 batch."""
        final = None
        for final in self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                    model_kwargs, device, progress, guidance, step_noise_fn):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False, guidance=None,
                                  step_noise_fn=None):
        """Yield each DDPM step's {"sample", "pred_xstart", "t"}."""
        yield from self._loop(self.p_sample, model, shape, noise, device, progress, step_noise_fn,
                              dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                                   model_kwargs=model_kwargs, guidance=guidance))

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, guidance=None, step_noise_fn=None):
        """Sample with DDIM steps; returns the final x_0 batch."""
        final = None
        for final in self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                       model_kwargs, device, progress, eta, guidance, step_noise_fn):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     guidance=None, step_noise_fn=None):
        """Yield each DDIM step's {"sample", "pred_xstart", "t"}."""
        yield from self._loop(self.ddim_sample, model, shape, noise, device, progress,
                              step_noise_fn if eta != 0 else None,
                              dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                                   model_kwargs=model_kwargs, eta=eta, guidance=guidance))

    def _loop(self, step, model, shape, noise, device, progress, step_noise_fn, step_kwargs):
        """Shared driver of both loops. `step_noise_fn(t_index)` supplies each step's noise, if given."""
        guidance_lib.validate(step_kwargs.get("guidance"), model)  # bad layer names fail before step one
        if device is None:
            device = next(model.parameters()).device
        img = noise.to(device) if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        for i in tqdm(indices, desc="sampling", leave=False) if progress else indices:
            t = torch.full((img.shape[0],), i, device=device, dtype=torch.long)
            step_noise = step_noise_fn(i) if step_noise_fn is not None and i > 0 else None
            with torch.no_grad():
                out = step(model, img, t, step_noise=step_noise, **step_kwargs)
            out["t"] = i
            yield out
            img = out["sample"]

    # ----------------------------------------------------------------------------------------------
    # Training

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """The VB term for one timestep in bits per dimension (the decoder NLL at t = 0)."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])) / np.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                           log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / np.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-example training losses {"loss", "mse", "vb"} at timesteps `t`."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = self.run_model(model, x_t, t, **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            model_output, var_values = self.split_output(model_output, x_t)
            # The VB term trains only the variance: the mean is detached.
            frozen = torch.cat([model_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(_Constant(frozen), x_start, x_t, t, clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = {
            ModelMeanType.PREVIOUS_X: lambda: self.q_posterior_mean_variance(x_start, x_t, t)[0],
            ModelMeanType.START_X: lambda: x_start,
            ModelMeanType.EPSILON: lambda: noise,
        }[self.model_mean_type]()
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits per dimension."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)) / np.log(2.0)


class _Constant:
    """A stand-in 'model' that returns a fixed output whatever it is called with."""

    def __init__(self, output):
        self.output = output

    def __call__(self, *args, **kwargs):
        return self.output

"""Gaussian diffusion as in ADM (Dhariwal & Nichol, 2021; Nichol & Dhariwal, 2021).

The process itself: schedules (float64, gathered per timestep and cast to float32 as the release does),
the forward process, the posterior, model output -> prediction, and the training losses. It knows
nothing of sampling or guidance: `sampling.denoiser` makes the guided prediction, `sampling.steps` the
DDPM / DDIM steps and the one loop, and `sampling.release` adds the release's sampling methods
(`p_sample_loop`, ...) to these classes for its import paths.
"""

import enum

import numpy as np
import torch

from guided_diffusion.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from guided_diffusion.diffusion.schedules import betas_for_alpha_bar, get_named_beta_schedule  # noqa: F401 - the release's names
from guided_diffusion.diffusion.schedules import extract_into_tensor as _extract_into_tensor
from guided_diffusion.model.nn import mean_flat


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

    def base_timesteps(self, t):
        """Base-process timesteps of step indices `t`: the one place a step index is mapped."""
        return torch.as_tensor(self.timestep_map, device=t.device)[t]

    def model_timesteps(self, t):
        """The timesteps to feed the network for step indices `t` (base timesteps, rescaled to 0..1000 if asked)."""
        mapped = self.base_timesteps(t)
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

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
        """The release's p_mean_variance body, from an already computed (possibly guided) model output.

        Also returns `raw_pred_xstart`: the x0 prediction after `denoised_fn`, before the clip."""
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

        raw_xstart = self.xstart_from_output(x, t, mean_output)
        if denoised_fn is not None:
            raw_xstart = denoised_fn(raw_xstart)
        pred_xstart = raw_xstart.clamp(-1, 1) if clip_denoised else raw_xstart
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            model_mean = mean_output
        else:
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart, "raw_pred_xstart": raw_xstart}

    def xstart_from_output(self, x, t, mean_output):
        """The x0 prediction (unclipped) that a model's mean output stands for."""
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self._predict_xstart_from_xprev(x, t, mean_output)
        if self.model_mean_type == ModelMeanType.START_X:
            return mean_output
        return self.predict_xstart_from_eps(x, t, mean_output)

    def output_from_xstart(self, x, t, xstart):
        """The mean output that stands for the x0 prediction `xstart` (the inverse of `xstart_from_output`)."""
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self.q_posterior_mean_variance(xstart, x, t)[0]
        if self.model_mean_type == ModelMeanType.START_X:
            return xstart
        return self.predict_eps_from_xstart(x, t, xstart)

    def eps_from_output(self, x, t, mean_output):
        """The noise prediction that a model's mean output stands for (eps- and x0-predicting models)."""
        if self.model_mean_type == ModelMeanType.EPSILON:
            return mean_output
        if self.model_mean_type == ModelMeanType.START_X:
            return self.predict_eps_from_xstart(x, t, mean_output)
        raise ValueError("this needs an eps- or x0-predicting model, not an x_{t-1}-predicting one")

    def predict_xstart_from_eps(self, x_t, t, eps):
        return (_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (_extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
                - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t)

    def predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return ((_extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # ----------------------------------------------------------------------------------------------
    # Training

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """The VB term for one timestep in bits per dimension (the decoder NLL at t = 0)."""
        output = self.run_model(model, x_t, t, **(model_kwargs or {}))
        return self.vb_terms_from_output(output, x_start, x_t, t, clip_denoised)

    def vb_terms_from_output(self, model_output, x_start, x_t, t, clip_denoised=True):
        """`_vb_terms_bpd` of an already computed raw model output."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.prediction_from_output(*self.split_output(model_output, x_t), x_t, t, clip_denoised)
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
            terms["vb"] = self.vb_terms_from_output(frozen, x_start, x_t, t, clip_denoised=False)["output"]
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

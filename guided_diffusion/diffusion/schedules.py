"""Noise schedules of the ADM release and the per-timestep lookup of schedule arrays.

Schedules are float64 numpy arrays; values are gathered per timestep before casting to float32, exactly
as the release does, so its checkpoints sample the same numbers.
"""

import math

import numpy as np
import torch


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


def extract_into_tensor(arr, timesteps, broadcast_shape):
    """Gather float64 schedule values at `timesteps`, cast to float32 and broadcast."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.reshape(*res.shape, *([1] * (len(broadcast_shape) - res.ndim))).expand(broadcast_shape)


def per_row(values, like):
    """[B] per-row values (scales, flags, step sizes) shaped to broadcast over the rows of `like` ([B, ...])."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))

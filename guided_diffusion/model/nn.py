"""Small building blocks shared by the U-Net, the classifier and the diffusion code."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as torch_checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 (the fp16 models of the release rely on this)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def conv_nd(dims, *args, **kwargs):
    convs = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    if dims not in convs:
        raise ValueError(f"unsupported dimensions: {dims}")
    return convs[dims](*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    pools = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
    if dims not in pools:
        raise ValueError(f"unsupported dimensions: {dims}")
    return pools[dims](*args, **kwargs)


class Linear(nn.Linear):
    """nn.Linear whose CPU result for a row does not depend on the batch size.

    CPU GEMM picks kernels by the number of rows, so the same row can differ in the last bits between
    batch sizes; a 1x1 convolution computes every row alike. This keeps sampling bit-identical on CPU for
    any batch size (one of the sampler's guarantees). GPUs use the usual GEMM.
    """

    def forward(self, x):
        if x.device.type == "cpu" and x.ndim == 2:
            return F.conv1d(x[..., None], self.weight[..., None], self.bias)[..., 0]
        return super().forward(x)


def linear(*args, **kwargs):
    return Linear(*args, **kwargs)


def zero_module(module):
    """Zero a module's parameters (the release zero-initialises every residual branch's last layer)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def mean_flat(tensor):
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embeddings of (possibly fractional) timesteps, cosines first, as in the release."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func, inputs, enabled):
    """Gradient checkpointing that only kicks in when it saves memory: while training with grads on."""
    if enabled and torch.is_grad_enabled():
        return torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def silu():
    return nn.SiLU()


def interpolate_nearest_2x(x):
    if x.ndim == 5:  # 3D signals upsample the inner two dimensions only
        return F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
    return F.interpolate(x, scale_factor=2, mode="nearest")

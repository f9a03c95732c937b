"""The Gaussian blur that SAG (of the x0 prediction) and SEG (of the queries) share."""

import torch
import torch.nn.functional as F


def gaussian_blur(images, kernel_size, sigma):
    """Per-channel Gaussian blur with reflect padding (the same kernel as torchvision's GaussianBlur)."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel1d = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = kernel1d / kernel1d.sum()
    kernel2d = torch.mm(kernel1d[:, None], kernel1d[None, :])
    channels = images.shape[1]
    pad = kernel_size // 2
    padded = F.pad(images, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, kernel2d.expand(channels, 1, kernel_size, kernel_size), groups=channels)

"""Restoration metrics on image batches in [0, 1] ([B, C, H, W]), one value per image.

- `psnr`: 10 log10(data_range^2 / MSE), the MSE over all pixels and channels of an image.
- `ssim`: SSIM (Wang et al., 2004) with an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03,
  population (biased) local statistics and only the positions where the window fits ("valid"), averaged
  over the positions and the channels: the reference formulation, also what scikit-image computes with
  `gaussian_weights=True, use_sample_covariance=False, channel_axis=...` on the interior. Images smaller
  than the window use the largest odd window that fits.
- `gmsd`: gradient magnitude similarity deviation (Xue et al., 2014), a cheap full-reference perceptual
  score that needs no learned weights (lower is better; 0 for identical images): Prewitt gradients of the
  luma (ITU-R BT.601), after the paper's 2x2 average-and-subsample for images of 32 pixels or more.
- `lpips`: only when the `lpips` package and its weights are installed (None otherwise); nothing here
  downloads weights.

`to_unit(x)` maps model-range tensors ([-1, 1]) to [0, 1]; `uint8_to_unit` maps uint8 NHWC arrays.
FID needs an Inception network and a reference batch: use `evaluations.evaluator` on the `results.npz`
written by `scripts/inverse_sample.py` (its `arr_0` is the evaluator's format).
"""

import numpy as np
import torch
import torch.nn.functional as F


def to_unit(x):
    """[-1, 1] -> [0, 1] (clamped), float64."""
    return ((x.double() + 1) / 2).clamp(0, 1)


def uint8_to_unit(images):
    """uint8 [N, H, W, C] (numpy or tensor) -> float64 [N, C, H, W] in [0, 1]."""
    images = torch.as_tensor(np.asarray(images))
    return images.permute(0, 3, 1, 2).double() / 255.0


def _check_pair(x, y):
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"expected two batches [B, C, H, W] of the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x.double(), y.double()


def psnr(x, y, data_range=1.0):
    """Peak signal-to-noise ratio in dB per image ([B] float64); inf for identical images."""
    x, y = _check_pair(x, y)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size, sigma, dtype, device):
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(x, window):
    """Separable valid filtering of every channel of [B, C, H, W] with a 1-D window."""
    channels, k = x.shape[1], window.numel()
    x = F.conv2d(x, window.reshape(1, 1, k, 1).expand(channels, 1, k, 1), groups=channels)
    return F.conv2d(x, window.reshape(1, 1, 1, k).expand(channels, 1, 1, k), groups=channels)


def ssim(x, y, data_range=1.0, window_size=11, sigma=1.5, k1=0.01, k2=0.03):
    """Structural similarity per image ([B] float64), mean over valid window positions and channels."""
    x, y = _check_pair(x, y)
    size = min(window_size, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, sigma, x.dtype, x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x**2
    var_y = _filter(y * y, window) - mu_y**2
    cov = _filter(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def _luma(x):
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def gmsd(x, y, data_range=1.0, c=0.0026):
    """Gradient magnitude similarity deviation per image ([B] float64; lower is better).

    `c` is the paper's 170 for 0..255 images, expressed for a data range of 1 (170 / 255^2).
    """
    x, y = _check_pair(x, y)
    x, y = _luma(x / data_range), _luma(y / data_range)
    if min(x.shape[-2:]) >= 32:
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=x.dtype, device=x.device) / 3
    kernels = torch.stack([prewitt, prewitt.t()])[:, None]

    def magnitude(img):
        g = F.conv2d(F.pad(img, [1, 1, 1, 1], mode="replicate"), kernels)
        return g.pow(2).sum(dim=1).sqrt()

    mx, my = magnitude(x), magnitude(y)
    gms = (2 * mx * my + c) / (mx**2 + my**2 + c)
    return gms.flatten(1).std(dim=1, unbiased=False)


_LPIPS = {}


def lpips(x, y, net="alex"):
    """LPIPS per image ([B]) if the `lpips` package with its weights is installed, else None."""
    try:
        import lpips as lpips_lib  # noqa: F401 - optional dependency
    except ImportError:
        return None
    if net not in _LPIPS:
        try:
            _LPIPS[net] = lpips_lib.LPIPS(net=net, verbose=False).eval()
        except Exception:  # weights missing and no network: report no value rather than fail a run
            return None
    x, y = _check_pair(x, y)
    model = _LPIPS[net].to(x.device)
    with torch.no_grad():
        return model(x.float() * 2 - 1, y.float() * 2 - 1).flatten().double()


def restoration_metrics(reconstruction, ground_truth, with_lpips=True):
    """{"psnr", "ssim", "gmsd"[, "lpips"]}: per-image lists for [0, 1] batches."""
    out = {"psnr": psnr(reconstruction, ground_truth).tolist(),
           "ssim": ssim(reconstruction, ground_truth).tolist(),
           "gmsd": gmsd(reconstruction, ground_truth).tolist()}
    if with_lpips:
        value = lpips(reconstruction, ground_truth)
        if value is not None:
            out["lpips"] = value.tolist()
    return out

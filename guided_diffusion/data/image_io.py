"""Converting samples to 8-bit images, and a PNG contact sheet of them."""

import numpy as np
import torch
from PIL import Image


def to_uint8(x):
    """Samples in [-1, 1] (a [B, C, H, W] tensor) as uint8 NHWC, rounded down exactly as the ADM release does."""
    images = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous()


def save_image_grid(images, path, ncols=8):
    """Write uint8 NHWC `images` (numpy or tensor) as one PNG, `ncols` per row, the last row padded black."""
    images = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    count, height, width, channels = images.shape
    if count == 0:
        raise ValueError("no images to put in a grid")
    ncols = max(1, min(ncols, count))
    nrows = -(-count // ncols)
    grid = np.zeros((nrows * height, ncols * width, channels), dtype=np.uint8)
    for k, image in enumerate(images):
        row, col = divmod(k, ncols)
        grid[row * height:(row + 1) * height, col * width:(col + 1) * width] = image
    Image.fromarray(grid[..., 0] if channels == 1 else grid).save(path)
    return path

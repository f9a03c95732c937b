"""Image I/O: the release's uint8 conversion and the sample grid."""

import numpy as np
import torch
from PIL import Image

from guided_diffusion.data.image_io import save_image_grid, to_uint8


def test_to_uint8_matches_the_release():
    x = torch.tensor([-1.5, -1.0, -0.01, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 7).expand(1, 3, 1, 7)
    out = to_uint8(x)
    assert out.shape == (1, 1, 7, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 126, 127, 254, 255, 255]


def test_image_grid_layout(tmp_path):
    images = np.stack([np.full((2, 2, 3), 20 * i, np.uint8) for i in range(10)])
    path = save_image_grid(images, tmp_path / "g.png", ncols=4)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (6, 8, 3)
    assert grid[2, 2, 0] == 20 * 5 and grid[4, 4, 0] == 0  # image 5 in row 1, col 1; padding is black

"""Sample and reference images must have one resolution, unless resizing is asked for.

Feature networks resize whatever they are given (the Inception graph to 299x299, the digits network to
16x16), so 32x32 samples against a 16x16 reference would be scored without a word, and the score would
measure the resizing as much as the samples. The evaluator therefore refuses a mismatch, and with
``--resize`` brings the samples to the reference's resolution before the feature network sees them.
"""


import numpy as np
from PIL import Image

__all__ = ["resize_images", "sample_resize_target"]


def _size(info):
    """(H, W) of the images an `NpzInfo` describes."""
    return int(info.image_shape[1]), int(info.image_shape[2])


def sample_resize_target(ref, sample, resize):
    """``(H, W)`` to resize the samples to, ``None`` to leave them; ``ValueError`` for a refused mismatch."""
    if not ref.has_images:
        if resize:
            raise ValueError(
                f"--resize needs the reference's resolution, but {ref.path} stores statistics only "
                "(no arr_0 images); leave out --resize and sample at the reference's resolution"
            )
        return None  # statistics alone do not tell the resolution
    ref_size, sample_size = _size(ref), _size(sample)
    if ref_size == sample_size:
        return None
    if not resize:
        (rh, rw), (sh, sw) = ref_size, sample_size
        raise ValueError(
            f"the samples are {sh}x{sw} ({sample.path}) but the reference images are {rh}x{rw} "
            f"({ref.path}); scores across resolutions are not comparable: sample at {rh}x{rw}, or "
            f"pass --resize to resize the samples to {rh}x{rw} (bicubic) before scoring"
        )
    return ref_size


def resize_images(batch, size):
    """uint8 ``[B, H, W, 3]`` -> uint8 ``[B, *size, 3]`` with PIL's bicubic filter (antialiased when shrinking)."""
    height, width = size
    out = np.empty((len(batch), height, width, batch.shape[-1]), np.uint8)
    for i, image in enumerate(batch):
        out[i] = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
    return out

"""The embedded toy dataset: scikit-learn's 1,797 handwritten digits as small RGB images.

The 8x8 digits (grey levels 0..16) are upscaled bilinearly to 16 or 32 pixels and written white on black
as uint8 RGB, the layout the evaluator and `image_datasets.load_data` read (`arr_0` NHWC, `arr_1` labels).
The train / held-out split is fixed: a permutation of the 1,797 indices drawn with
`numpy.random.RandomState(0)` (whose stream numpy keeps stable across versions); its first 1,500 entries
are the training set and the remaining 297 the held-out set, each sorted by the original index.

    python -m guided_diffusion.data.digits --image_size 16 --split heldout --out digits16_heldout.npz
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from guided_diffusion.data.labelled_npz import write_labelled_npz, write_split_main

NUM_DIGITS = 1797
TRAIN_SIZE = 1500
HELDOUT_SIZE = NUM_DIGITS - TRAIN_SIZE
SPLIT_SEED = 0
SPLITS = ("train", "heldout", "all")


def _load_raw():
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset ships with scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    if images.shape != (NUM_DIGITS, 8, 8):
        raise RuntimeError(f"unexpected scikit-learn digits shape {images.shape}")
    return images, labels


def split_indices():
    """(train, heldout) indices into `sklearn.datasets.load_digits()`, disjoint and fixed."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_DIGITS)
    return np.sort(perm[:TRAIN_SIZE]), np.sort(perm[TRAIN_SIZE:])


def upscale(images, image_size):
    """8x8 grey levels in 0..16 ([N, 8, 8]) as uint8 RGB [N, S, S, 3], bilinearly upscaled."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None] / 16.0
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    grey = (x.clamp(0, 1) * 255.0).round().to(torch.uint8)[:, 0].numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def load_digits_split(image_size=16, split="train"):
    """The `split` ("train", "heldout" or "all") as (uint8 RGB images [N, S, S, 3], int64 labels [N])."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}: use one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise ValueError(f"image_size {image_size} is smaller than the 8x8 source digits")
    images, labels = _load_raw()
    if split != "all":
        train, heldout = split_indices()
        index = train if split == "train" else heldout
        images, labels = images[index], labels[index]
    return upscale(images, image_size), labels


def write_digits_npz(path, image_size=16, split="train"):
    """Write a split in the evaluator's batch format (`arr_0` uint8 NHWC, `arr_1` labels)."""
    return write_labelled_npz(path, *load_digits_split(image_size, split))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the scikit-learn digits split as an .npz batch")
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--split", choices=SPLITS, default="train")
    write_split_main(parser, argv, "digits{image_size}_{split}.npz",
                     lambda out, args: write_digits_npz(out, args.image_size, args.split))


if __name__ == "__main__":
    main()

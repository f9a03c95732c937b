"""Fashion-MNIST (Xiao et al. 2017) as 32x32 RGB images, the CPU testbed's dataset.

The four standard idx files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`; plain or gzipped) are read from `--data_dir`,
`$FASHION_MNIST_DIR` or Debian's `dataset-fashion-mnist` folder. The 28x28 grey images are padded by two
pixels of background (0) on each side to 32x32, the size of an ADM U-Net with three halvings, and written as
uint8 RGB (`arr_0` NHWC, `arr_1` labels), the layout the evaluator and `image_datasets.load_data` read.

    python -m guided_diffusion.data.fashion_mnist --split test --out fashion32_test.npz
"""

import argparse
import gzip
import os

import numpy as np

from guided_diffusion.data.labelled_npz import write_labelled_npz, write_split_main

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
IMAGE_SIZE = 32
_IDX_DTYPE = 0x08  # unsigned byte, the only element type Fashion-MNIST uses


def default_dir():
    return os.environ.get("FASHION_MNIST_DIR") or DEBIAN_DIR


def _find(folder, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}: install Debian's package "
        f"(apt-get install dataset-fashion-mnist, which puts the four idx files in {DEBIAN_DIR}) or set "
        f"FASHION_MNIST_DIR to the folder that holds {', '.join(s + '.gz' for pair in SPLITS.values() for s in pair)}")


def read_idx(path):
    """An idx file (gzipped or not) as a uint8 array of its stated shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_DTYPE:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} values but its header says {shape}: the file is truncated")
    return body.reshape(shape)


def pad_to_rgb(images, image_size=IMAGE_SIZE):
    """[N, 28, 28] grey uint8 -> [N, S, S, 3] uint8, centred on background 0."""
    n, h, w = images.shape
    if image_size < max(h, w):
        raise ValueError(f"image_size {image_size} is smaller than the {h}x{w} Fashion-MNIST images")
    top, left = (image_size - h) // 2, (image_size - w) // 2
    out = np.zeros((n, image_size, image_size), dtype=np.uint8)
    out[:, top:top + h, left:left + w] = images
    return np.repeat(out[..., None], 3, axis=-1)


def load_fashion_split(split="train", data_dir=None, image_size=IMAGE_SIZE):
    """The `split` ("train" or "test") as (uint8 RGB images [N, S, S, 3], int64 labels [N])."""
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}: use one of {', '.join(SPLITS)}")
    folder = data_dir or default_dir()
    image_stem, label_stem = SPLITS[split]
    images = read_idx(_find(folder, image_stem))
    labels = read_idx(_find(folder, label_stem)).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"Fashion-MNIST {split} in {folder}: images {images.shape} and labels {labels.shape} "
                         "do not pair up")
    return pad_to_rgb(images, image_size), labels


def write_fashion_npz(path, split="train", data_dir=None, image_size=IMAGE_SIZE):
    """Write a split in the evaluator's batch format (`arr_0` uint8 NHWC, `arr_1` labels)."""
    return write_labelled_npz(path, *load_fashion_split(split, data_dir, image_size))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a Fashion-MNIST split as a 32x32 RGB .npz batch")
    parser.add_argument("--split", choices=tuple(SPLITS), default="test", help="which split")
    parser.add_argument("--data_dir", default=None, help=f"folder of the idx files (default: {DEBIAN_DIR})")
    write_split_main(parser, argv, "fashion32_{split}.npz",
                     lambda out, args: write_fashion_npz(out, args.split, args.data_dir))


if __name__ == "__main__":
    main()

"""The Fashion-MNIST loader on tiny synthetic idx files (CI has no dataset)."""

import gzip
import struct

import numpy as np
import pytest

from guided_diffusion.data.datasets import open_dataset
from guided_diffusion.data.fashion_mnist import load_fashion_split, pad_to_rgb, read_idx, write_fashion_npz


def write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    labels = {"train": np.array([0, 9, 3, 3, 1]), "t10k": np.array([7, 2, 5])}
    for split in images:
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[split])
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels[split], compress=False)  # plain works too
    return tmp_path, images, labels


def test_split_is_padded_rgb(fake_fashion):
    folder, images, labels = fake_fashion
    x, y = load_fashion_split("test", str(folder))
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, labels["t10k"])
    np.testing.assert_array_equal(x[:, 2:30, 2:30, 1], images["t10k"])
    assert (x[:, :2] == 0).all() and (x[:, 30:] == 0).all() and (x[:, :, :2] == 0).all()
    assert (x[..., 0] == x[..., 2]).all()


def test_data_dir_spec_reads_the_split(fake_fashion):
    folder, images, labels = fake_fashion
    dataset = open_dataset(f"fashion:train:{folder}", 32, class_cond=True)
    assert len(dataset) == 5
    assert [dataset.label(i) for i in range(5)] == list(labels["train"])


def test_npz_round_trip(fake_fashion, tmp_path):
    folder, images, _ = fake_fashion
    out = write_fashion_npz(str(tmp_path / "out" / "f.npz"), "train", str(folder))
    with np.load(out) as data:
        np.testing.assert_array_equal(data["arr_0"][:, 2:30, 2:30, 0], images["train"])


def test_missing_folder_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_split("train", str(tmp_path))


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((2, 4, 4)), compress=False)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(path))
    path.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(str(path))


def test_pad_refuses_smaller_size():
    with pytest.raises(ValueError, match="smaller"):
        pad_to_rgb(np.zeros((1, 28, 28), np.uint8), 16)

"""The shipped Fashion-MNIST feature network as the evaluator's `fashion` backend."""

import os

import numpy as np
import pytest
import torch

from evaluations.backends import create_backend
from evaluations.fashion_features import DEFAULT_CHECKPOINT, FashionFeatureNet, preprocess
from guided_diffusion.data.fashion_mnist import DEBIAN_DIR

from conftest import garments
from programs import missing


def test_backend_gives_the_three_feature_kinds():
    backend = create_backend("fashion")
    feats = backend.compute(garments(5))
    assert {k: v.shape for k, v in feats.items()} == {"pool": (5, 256), "spatial": (5, 2048), "probs": (5, 10)}
    np.testing.assert_allclose(feats["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert backend.fingerprint().startswith("fashion:") and len(backend.fingerprint()) == len("fashion:") + 16
    # batch-independent: one image alone gives the same features as inside a batch (eval-mode BatchNorm)
    alone = backend.compute(garments(5)[2:3])
    np.testing.assert_allclose(alone["pool"][0], feats["pool"][2], rtol=1e-5, atol=1e-5)


def test_shipped_weights_are_small_and_load_strictly():
    assert os.path.getsize(DEFAULT_CHECKPOINT) < 2e6
    state = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    assert set(state) == set(FashionFeatureNet().state_dict())


def test_other_sizes_are_refused():
    with pytest.raises(ValueError, match="32, 32"):
        preprocess(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((2, 32, 32, 3), np.float32))


def test_test_split_accuracy_as_documented():
    """Where the dataset is installed (CI installs it): the shipped network reads the first 2,000 test garments
    at >= 91%."""
    if not os.path.exists(os.path.join(DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")):
        missing("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from guided_diffusion.data.fashion_mnist import load_fashion_split

    images, labels = load_fashion_split("test")
    probs = create_backend("fashion").compute(images[:2000])["probs"]
    assert (probs.argmax(1) == labels[:2000]).mean() >= 0.91

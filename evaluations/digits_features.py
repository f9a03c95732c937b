"""A small digit classifier as the evaluator's feature backend for the embedded digits dataset.

The ImageNet metrics read three things from the Inception network: pooled features (FID, precision,
recall), a flattened lower-level spatial map (sFID) and class probabilities (Inception Score). For the
16x16 scikit-learn digits (`guided_diffusion.data.digits`) this module gives the same three from a CNN trained
on the digits' training split only (`scripts/train_digits_features.py`), shipped as
`checkpoints/digits_features.pt`:

    backend = digits_feature_backend()
    feats = backend.compute(images_uint8_nhwc)   # {"pool": [N, 128], "spatial": [N, 512], "probs": [N, 10]}

Architecture (all float32): RGB in [-1, 1] at 16x16 (other sizes are resized bilinearly) ->
conv3x3(3->32)+ReLU -> maxpool 2 (8x8) -> conv3x3(32->64)+ReLU -> maxpool 2 (4x4) -> flatten ->
linear(1024->128)+ReLU = "pool" -> linear(128->10) = logits. "spatial" is the first 8 channels of the
8x8 map after the first pooling, flattened (512 values), as the ADM evaluator takes the first 7 channels
of Inception's mixed_6 map.
"""

import torch.nn as nn
import torch.nn.functional as F

from .classifier_backend import (
    SPATIAL_CHANNELS,
    ClassifierFeatureBackend,
    resized,
    shipped_checkpoint,
    spatial_features,
    uint8_images_as_input,
)

INPUT_SIZE = 16
POOL_DIM = 128
NUM_CLASSES = 10
DEFAULT_CHECKPOINT = shipped_checkpoint("digits")


class DigitsFeatureNet(nn.Module):
    feature_dims = {"pool": POOL_DIM, "spatial": SPATIAL_CHANNELS * (INPUT_SIZE // 2) ** 2, "probs": NUM_CLASSES}

    def __init__(self, pool_dim=POOL_DIM, num_classes=NUM_CLASSES, dropout=0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (INPUT_SIZE // 4) ** 2, pool_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(pool_dim, num_classes)

    def features(self, x):
        """{"spatial", "pool", "logits"} for images `x` [N, 3, 16, 16] in [-1, 1]."""
        h1 = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h2 = F.max_pool2d(F.relu(self.conv2(h1)), 2)
        pool = F.relu(self.fc(h2.flatten(1)))
        logits = self.head(self.dropout(pool))
        return {"spatial": spatial_features(h1), "pool": pool, "logits": logits}

    def forward(self, x):
        return self.features(x)["logits"]


def preprocess(images_uint8_nhwc, device="cpu"):
    """uint8 images [N, H, W, C] (C = 1 or 3, or [N, H, W]) as float [N, 3, 16, 16] in [-1, 1]."""
    return resized(uint8_images_as_input(images_uint8_nhwc, device), INPUT_SIZE)


class DigitsFeatureBackend(ClassifierFeatureBackend):
    """Feature backend for 16x16 digits: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}."""

    name = "digits"
    net_class = DigitsFeatureNet
    preprocess = staticmethod(preprocess)


def digits_feature_backend(path=None, device="cpu", batch_size=500):
    """The digits feature backend (`name == "digits"`) with the shipped weights."""
    return DigitsFeatureBackend(path=path, device=device, batch_size=batch_size)

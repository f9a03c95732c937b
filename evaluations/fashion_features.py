"""A Fashion-MNIST classifier as the evaluator's feature backend for the CPU testbed (`--backend fashion`).

The ImageNet metrics read three things from Inception: pooled features (FID, KID, precision, recall), a
lower-level spatial map (sFID) and class probabilities (Inception Score). For the 32x32 Fashion-MNIST
images of `guided_diffusion.data.fashion_mnist` this network gives the same three. It is trained on the 60,000
training images only (`scripts/train_fashion_features.py`) and shipped as `checkpoints/fashion_features.pt`.

Architecture (float32): RGB in [-1, 1] at 32x32 -> three stages of conv3x3 + BatchNorm + ReLU + maxpool 2
(32, 64, 128 channels; 16, 8, 4 pixels) -> flatten -> linear(2048 -> 256) + ReLU = "pool" -> linear(256 -> 10)
= logits. "spatial" is the first 8 channels of the 16x16 map after the first stage (2,048 values), as the ADM
evaluator takes the first 7 channels of Inception's 17x17 mixed_6 map.
"""

import torch.nn as nn
import torch.nn.functional as F

from .classifier_backend import (
    SPATIAL_CHANNELS,
    ClassifierFeatureBackend,
    shipped_checkpoint,
    spatial_features,
    uint8_images_as_input,
)

INPUT_SIZE = 32
CHANNELS = (32, 64, 128)
POOL_DIM = 256
NUM_CLASSES = 10
DEFAULT_CHECKPOINT = shipped_checkpoint("fashion")


class FashionFeatureNet(nn.Module):
    feature_dims = {"pool": POOL_DIM, "spatial": SPATIAL_CHANNELS * (INPUT_SIZE // 2) ** 2, "probs": NUM_CLASSES}

    def __init__(self, dropout=0.3):
        super().__init__()
        widths = (3,) + CHANNELS
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        side = INPUT_SIZE // 2 ** len(CHANNELS)
        self.fc = nn.Linear(CHANNELS[-1] * side * side, POOL_DIM)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(POOL_DIM, NUM_CLASSES)

    def features(self, x):
        """{"spatial", "pool", "logits"} for images `x` [N, 3, 32, 32] in [-1, 1]."""
        maps = []
        for stage in self.stages:
            x = F.max_pool2d(stage(x), 2)
            maps.append(x)
        pool = F.relu(self.fc(x.flatten(1)))
        logits = self.head(self.dropout(pool))
        return {"spatial": spatial_features(maps[0]), "pool": pool, "logits": logits}

    def forward(self, x):
        return self.features(x)["logits"]


def preprocess(images_uint8_nhwc, device="cpu"):
    """uint8 images [N, 32, 32, C] (C = 1 or 3, or [N, 32, 32]) as float [N, 3, 32, 32] in [-1, 1]."""
    return uint8_images_as_input(images_uint8_nhwc, device, size=INPUT_SIZE)


class FashionFeatureBackend(ClassifierFeatureBackend):
    """Feature backend for 32x32 Fashion-MNIST: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}."""

    name = "fashion"
    net_class = FashionFeatureNet
    preprocess = staticmethod(preprocess)

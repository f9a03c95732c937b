"""A small ResNet on Fashion-MNIST as a second feature backend for the CPU testbed (`--backend fashion_resnet`).

Rankings read in one network's feature space can mislead (Stein et al., 2023), so the testbed's metrics can
also be read in the space of a network of another architecture than `evaluations.fashion_features`: residual
blocks and global average pooling instead of plain convolutions and a fully connected layer. It is trained on
the 60,000 training images only (`scripts/train_fashion_features.py --arch resnet`) and shipped as
`checkpoints/fashion_resnet_features.pt`.

Architecture (float32): RGB in [-1, 1] at 32x32 -> stem conv3x3 (32 channels) + BatchNorm + ReLU + maxpool 2
-> three stages of two basic residual blocks (32, 64, 128 channels; 16, 8, 4 pixels; the first block of the
second and third stage has stride 2) -> global average pooling = "pool" (128 values) -> linear(128 -> 10) =
logits. "spatial" is the first 8 channels of the first stage's 16x16 map (2,048 values), as in the `fashion`
backend. The stem pools before the residual stages because at full resolution the blocks cost about four times as
much for a CPU-trained testbed network.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classifier_backend import SPATIAL_CHANNELS, ClassifierFeatureBackend, spatial_features
from .fashion_features import INPUT_SIZE, NUM_CLASSES, preprocess

CHANNELS = (32, 64, 128)
BLOCKS_PER_STAGE = 2


def conv_bn(c_in, c_out, kernel, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two conv3x3 + BatchNorm around a shortcut (a strided conv1x1 + BatchNorm where the shape changes)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class FashionResNetFeatureNet(nn.Module):
    feature_dims = {"pool": CHANNELS[-1], "spatial": SPATIAL_CHANNELS * (INPUT_SIZE // 2) ** 2, "probs": NUM_CLASSES}

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, CHANNELS[0], 3), nn.ReLU(), nn.MaxPool2d(2))
        widths = CHANNELS[:1] + CHANNELS
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(c_in, c_out, 1 if k == 0 else 2),
                          *(BasicBlock(c_out, c_out, 1) for _ in range(BLOCKS_PER_STAGE - 1)))
            for k, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])))
        self.head = nn.Linear(CHANNELS[-1], NUM_CLASSES)
        self.to(memory_format=torch.channels_last)  # CPU convolutions run about 20% faster channels-last

    def features(self, x):
        """{"spatial", "pool", "logits"} for images `x` [N, 3, 32, 32] in [-1, 1]."""
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        pool = x.mean(dim=(2, 3))
        return {"spatial": spatial_features(maps[0]), "pool": pool, "logits": self.head(pool)}

    def forward(self, x):
        return self.features(x)["logits"]


class FashionResNetFeatureBackend(ClassifierFeatureBackend):
    """Feature backend of the Fashion-MNIST ResNet: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}."""

    name = "fashion_resnet"
    trainer = "scripts/train_fashion_features.py --arch resnet"
    net_class = FashionResNetFeatureNet
    preprocess = staticmethod(preprocess)

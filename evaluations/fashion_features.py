"""A Fashion-MNIST classifier as the evaluator's feature backend for the CPU testbed (`--backend fashion`).

The ImageNet metrics read three things from Inception: pooled features (FID, KID, precision, recall), a
lower-level spatial map (sFID) and class probabilities (Inception Score). For the 32x32 Fashion-MNIST
images of `guided_diffusion.fashion` this network gives the same three. It is trained on the 60,000
training images only (`scripts/train_fashion_features.py`) and shipped as `checkpoints/fashion_features.pt`.

Architecture (float32): RGB in [-1, 1] at 32x32 -> three stages of conv3x3 + BatchNorm + ReLU + maxpool 2
(32, 64, 128 channels; 16, 8, 4 pixels) -> flatten -> linear(2048 -> 256) + ReLU = "pool" -> linear(256 -> 10)
= logits. "spatial" is the first 8 channels of the 16x16 map after the first stage (2,048 values), as the ADM
evaluator takes the first 7 channels of Inception's 17x17 mixed_6 map.
"""

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from guided_diffusion.file_io import file_sha256

INPUT_SIZE = 32
CHANNELS = (32, 64, 128)
POOL_DIM = 256
SPATIAL_CHANNELS = 8
NUM_CLASSES = 10
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "checkpoints", "fashion_features.pt")


class FashionFeatureNet(nn.Module):
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
        return {"spatial": maps[0][:, :SPATIAL_CHANNELS].flatten(1), "pool": pool, "logits": logits}

    def forward(self, x):
        return self.features(x)["logits"]


def preprocess(images_uint8_nhwc, device="cpu"):
    """uint8 images [N, 32, 32, C] (C = 1 or 3, or [N, 32, 32]) as float [N, 3, 32, 32] in [-1, 1]."""
    images = np.asarray(images_uint8_nhwc)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"the fashion backend reads images [N, {INPUT_SIZE}, {INPUT_SIZE}, 1 or 3], "
                         f"got shape {images.shape}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device).float().permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1) / 127.5 - 1.0


def load_feature_net(path=None, device="cpu"):
    """The trained network (eval mode) from `path` (default: the shipped checkpoints/fashion_features.pt)."""
    path = path or DEFAULT_CHECKPOINT
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: train it with scripts/train_fashion_features.py")
    net = FashionFeatureNet()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval()


class FashionFeatureBackend:
    """Feature backend for 32x32 Fashion-MNIST: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}."""

    name = "fashion"
    feature_dims = {"pool": POOL_DIM, "spatial": SPATIAL_CHANNELS * (INPUT_SIZE // 2) ** 2, "probs": NUM_CLASSES}

    def __init__(self, path=None, device="cpu", batch_size=500):
        path = path or DEFAULT_CHECKPOINT
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = load_feature_net(path, self.device)
        self._fingerprint = f"fashion:{file_sha256(path)[:16]}"

    def fingerprint(self):
        return self._fingerprint

    @torch.no_grad()
    def compute(self, images_uint8_nhwc):
        out = {"pool": [], "spatial": [], "probs": []}
        for start in range(0, len(images_uint8_nhwc), self.batch_size):
            feats = self.net.features(preprocess(images_uint8_nhwc[start:start + self.batch_size], self.device))
            out["pool"].append(feats["pool"].float().cpu())
            out["spatial"].append(feats["spatial"].float().cpu())
            out["probs"].append(feats["logits"].float().softmax(dim=-1).cpu())
        if not out["pool"]:
            return {k: np.zeros((0, d), dtype=np.float32) for k, d in self.feature_dims.items()}
        return {k: torch.cat(v).numpy().astype(np.float32) for k, v in out.items()}

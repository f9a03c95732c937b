"""A small digit classifier as the evaluator's feature backend for the embedded digits dataset.

The ImageNet metrics read three things from the Inception network: pooled features (FID, precision,
recall), a flattened lower-level spatial map (sFID) and class probabilities (Inception Score). For the
16x16 scikit-learn digits (`guided_diffusion.digits`) this module gives the same three from a CNN trained
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

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_SIZE = 16
POOL_DIM = 128
SPATIAL_CHANNELS = 8
NUM_CLASSES = 10
DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "checkpoints", "digits_features.pt")


class DigitsFeatureNet(nn.Module):
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
        return {"spatial": h1[:, :SPATIAL_CHANNELS].flatten(1), "pool": pool, "logits": logits}

    def forward(self, x):
        return self.features(x)["logits"]


def preprocess(images_uint8_nhwc, device="cpu"):
    """uint8 images [N, H, W, C] (C = 1 or 3, or [N, H, W]) as float [N, 3, 16, 16] in [-1, 1]."""
    images = images_uint8_nhwc
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 1 or 3], got shape {images.shape}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device).float().permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x / 127.5 - 1.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def load_feature_net(path=None, device="cpu"):
    """The trained network (eval mode) from `path` (default: the shipped checkpoints/digits_features.pt)."""
    path = path or DEFAULT_CHECKPOINT
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: train it with scripts/train_digits_features.py")
    net = DigitsFeatureNet()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval()


class DigitsFeatureBackend:
    """Feature backend for 16x16 digits: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}."""

    name = "digits"
    feature_dims = {"pool": POOL_DIM, "spatial": SPATIAL_CHANNELS * (INPUT_SIZE // 2) ** 2, "probs": NUM_CLASSES}

    def __init__(self, path=None, device="cpu", batch_size=500):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.net = load_feature_net(path, self.device)

    @torch.no_grad()
    def compute(self, images_uint8_nhwc):
        out = {"pool": [], "spatial": [], "probs": []}
        for start in range(0, len(images_uint8_nhwc), self.batch_size):
            x = preprocess(images_uint8_nhwc[start:start + self.batch_size], self.device)
            feats = self.net.features(x)
            out["pool"].append(feats["pool"].float().cpu())
            out["spatial"].append(feats["spatial"].float().cpu())
            out["probs"].append(feats["logits"].float().softmax(dim=-1).cpu())
        if not out["pool"]:
            return {k: np.zeros((0, d), dtype=np.float32) for k, d in self.feature_dims.items()}
        return {k: torch.cat(v).numpy().astype(np.float32) for k, v in out.items()}

    def predict(self, images_uint8_nhwc):
        """Predicted digit per image."""
        return self.compute(images_uint8_nhwc)["probs"].argmax(axis=1)


def digits_feature_backend(path=None, device="cpu", batch_size=500):
    """The digits feature backend (`name == "digits"`) with the shipped weights."""
    return DigitsFeatureBackend(path=path, device=device, batch_size=batch_size)

"""A small trained classifier read as the Inception network is read: the feature-backend glue shared by the
testbeds' networks (`evaluations.digits_features`, `evaluations.fashion_features`,
`evaluations.fashion_resnet_features`).

A subclass names the backend and its network class and turns uint8 images into the network's input
(`preprocess`); this class loads the weights, keys caches by their hash and computes the three feature kinds
in batches. The network's `features(x)` returns {"spatial", "pool", "logits"} and its class attribute
`feature_dims` their widths; the backend gives {"pool", "spatial", "probs"} as float32 arrays. The backend
named `name` ships its weights as `checkpoints/{name}_features.pt`, written by its `trainer` command
(default `scripts/train_{name}_features.py`).
"""

import os
from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from guided_diffusion.runtime.files import file_sha256

from .backend_base import FeatureBackend

# "spatial" is the first channels of a network's first pooled map, as the ADM evaluator takes the first 7
# channels of Inception's mixed_6 map for sFID.
SPATIAL_CHANNELS = 8
CHECKPOINT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")


def shipped_checkpoint(name):
    """The path of the weights shipped for the backend `name`."""
    return os.path.join(CHECKPOINT_DIR, f"{name}_features.pt")


def spatial_features(feature_map):
    """The "spatial" features of a [N, C, H, W] map: its first `SPATIAL_CHANNELS` channels, flattened."""
    return feature_map[:, :SPATIAL_CHANNELS].flatten(1)


def uint8_images_as_input(images_uint8_nhwc, device="cpu", size=None):
    """uint8 images [N, H, W, C] (C = 1 or 3, or [N, H, W]; numpy or torch) as float32 [N, 3, H, W] in
    [-1, 1], grey images repeated over the three channels. With `size`, images of another size are refused."""
    images = images_uint8_nhwc
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or (size and images.shape[1:3] != (size, size)):
        side = f"{size}, {size}" if size else "H, W"
        raise ValueError(f"expected images [N, {side}, 1 or 3], got shape {images.shape}")
    x = torch.from_numpy(np.array(images, copy=True)).to(device).float().permute(0, 3, 1, 2)
    return x.expand(-1, 3, -1, -1) / 127.5 - 1.0


def resized(x, size):
    """Images `x` [N, 3, H, W] resized bilinearly (antialiased) to `size` x `size`, unless already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_feature_net(net_class, path, device, trainer):
    """A `net_class()` with the float32 weights of `path` (stored in any float precision), in eval mode;
    `trainer` names the script that makes a missing file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: train it with {trainer}")
    net = net_class()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return net.to(device).eval()


class ClassifierFeatureBackend(FeatureBackend):
    """Feature backend of a trained classifier: `compute(uint8 NHWC)` -> {"pool", "spatial", "probs"}.

    Subclasses set `name` and `net_class` and define `preprocess(images, device)`, and may set `trainer`;
    `path` defaults to the shipped weights.
    """

    trainer = None  # the command that writes the shipped weights, named when they are missing

    def __init__(self, path=None, device="cpu", batch_size=500):
        path = path or shipped_checkpoint(self.name)
        self.device = torch.device(device)
        self.batch_size = batch_size
        trainer = self.trainer or f"scripts/train_{self.name}_features.py"
        self.net = load_feature_net(self.net_class, path, self.device, trainer)
        self._fingerprint = f"{self.name}:{file_sha256(path)[:16]}"

    @staticmethod
    @abstractmethod
    def preprocess(images_uint8_nhwc, device="cpu"):
        """uint8 images as the network's float input on `device`."""

    def fingerprint(self):
        return self._fingerprint

    @torch.no_grad()
    def compute(self, images_uint8_nhwc):
        out = {"pool": [], "spatial": [], "probs": []}
        for start in range(0, len(images_uint8_nhwc), self.batch_size):
            feats = self.net.features(self.preprocess(images_uint8_nhwc[start:start + self.batch_size], self.device))
            out["pool"].append(feats["pool"].float().cpu())
            out["spatial"].append(feats["spatial"].float().cpu())
            out["probs"].append(feats["logits"].float().softmax(dim=-1).cpu())
        if not out["pool"]:
            return {k: np.zeros((0, d), dtype=np.float32) for k, d in self.net_class.feature_dims.items()}
        return {k: torch.cat(v).numpy().astype(np.float32) for k, v in out.items()}

    def predict(self, images_uint8_nhwc):
        """The predicted class of each image."""
        return self.compute(images_uint8_nhwc)["probs"].argmax(axis=1)

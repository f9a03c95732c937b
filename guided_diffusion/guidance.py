"""Sampling guidance: what PAG, SAG and classifier guidance are (their options, layers and scales).

Scales follow the PAG paper (Eq. 10): ``eps~ = eps + s * (eps - eps_perturbed)``. The official PAG and SAG
scripts write ``eps~ = eps_perturbed + g * (eps - eps_perturbed)``; the two agree for ``s = g - 1``, so
their ``--guide_scale 4.0`` is ``scale=3.0`` here. Several guidances may be combined; each adds its own
``s_i * (eps - eps_i)``. `denoiser.GuidedDenoiser` binds them to a model and computes the guided
prediction (all attention perturbations of a step as one batch through the model, sharing every layer
before the first perturbed block).
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .attention import perturbed_attention, select_blocks, unwrap  # noqa: F401 - perturbed_attention: public here
from .scales import check_scale

# The official PAG layers for ADM ImageNet 256 (the deepest input blocks and the middle block).
OFFICIAL_PAG_LAYERS_256 = ("input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class Guidance:
    """Common options: the paper's scale `s`, an optional interval and a scale schedule.

    `interval=(lo, hi)` limits the guidance to base-process timesteps lo <= t <= hi (0 .. T-1, so it means the
    same for any respacing). `schedule` shapes the scale over the process with u = t / (T - 1) (1 = pure
    noise): `constant` s, `linear` s * u, `cosine` s * (1 - cos(pi * u)) / 2 (both strongest early).
    """

    scale: float
    interval: Optional[Tuple[int, int]] = None
    schedule: str = "constant"

    def __post_init__(self):
        check_scale(self.scale, f"{type(self).__name__}.scale")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.interval is not None:
            lo, hi = self.interval
            if not 0 <= lo <= hi:
                raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi, got {self.interval}")

    def scale_at(self, t_base, num_base_steps):
        """The scale for each sample at base-process timesteps `t_base` ([B] long tensor)."""
        u = t_base.double() / max(num_base_steps - 1, 1)
        if self.schedule == "linear":
            weight = u
        elif self.schedule == "cosine":
            weight = (1 - torch.cos(math.pi * u)) / 2
        else:
            weight = torch.ones_like(u)
        scale = self.scale * weight
        if self.interval is not None:
            lo, hi = self.interval
            scale = torch.where((t_base >= lo) & (t_base <= hi), scale, torch.zeros_like(scale))
        return scale.float()


@dataclass
class PerturbedAttentionGuidance(Guidance):
    """PAG: the perturbed pass uses the identity attention map at `layers`.

    `layers=None` takes the official ImageNet-256 set, which a model must have.
    """

    layers: Optional[Sequence[str]] = None

    def layer_names(self):
        layers = list(self.layers) if self.layers is not None else list(OFFICIAL_PAG_LAYERS_256)
        if not layers:
            raise ValueError("PAG needs at least one attention layer")
        return layers


@dataclass
class SelfAttentionGuidance(Guidance):
    """SAG (Hong et al., 2023): blur the predicted x0 where the attention map of `layer` is high.

    `map_heads="official"` reproduces the official SAG code: the map is computed from the block's qkv
    with the legacy head split into the model's `num_heads` flag, which differs from the block's own head
    count when `num_head_channels` is set. `map_heads="block"` uses the block's own heads and layout (the
    corrected variant).
    """

    blur_sigma: float = 9.0
    layer: str = "middle_block.1"
    map_heads: str = "official"
    threshold: float = 1.0
    kernel_size: int = 31

    def __post_init__(self):
        super().__post_init__()
        if self.map_heads not in ("official", "block"):
            raise ValueError(f"map_heads must be 'official' or 'block', got {self.map_heads!r}")

    def layer_names(self):
        return [self.layer]

    def map_layout(self, model, block):
        """(heads, legacy): the QKV split of `block` that SAG's attention map is computed with."""
        if self.map_heads == "official":
            return unwrap(model).num_heads, True
        return block.num_heads, block.legacy

    def degrade(self, pred_xstart, attention_map):
        """Blur `pred_xstart` where the key positions receive more than `threshold` total attention."""
        batch, _, height, width = pred_xstart.shape
        received = attention_map.sum(dim=1)  # [B, keys]: total attention each key position receives
        side = math.isqrt(received.shape[1])
        if side * side != received.shape[1]:
            raise ValueError(f"SAG needs a square attention map, got {received.shape[1]} positions")
        mask = (received > self.threshold).reshape(batch, 1, side, side).to(pred_xstart.dtype)
        mask = F.interpolate(mask, size=(height, width), mode="nearest")
        blurred = gaussian_blur(pred_xstart, self.kernel_size, self.blur_sigma)
        return blurred * mask + pred_xstart * (1 - mask)


class ClassifierGuidance:
    """ADM classifier guidance: `scale * grad_x log p(y | x_t)` from a noisy-image classifier."""

    def __init__(self, classifier, scale, interval=None, schedule="constant"):
        self.classifier = classifier
        self.options = Guidance(check_scale(scale, "ClassifierGuidance scale"), interval, schedule)

    def gradient(self, x, t_model, y):
        """grad_x of sum_i log_softmax(classifier(x, t))[i, y_i]."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t_model), dim=-1)
            selected = log_probs[torch.arange(len(log_probs), device=x.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0]

    def scaled_gradient(self, x, t_model, y, t_base, num_base_steps):
        """The gradient times this guidance's scale at base timesteps `t_base`."""
        scale = self.options.scale_at(t_base, num_base_steps)
        return self.gradient(x, t_model, y) * scale.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_blur(images, kernel_size, sigma):
    """Per-channel Gaussian blur with reflect padding (the same kernel as torchvision's GaussianBlur)."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel1d = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = kernel1d / kernel1d.sum()
    kernel2d = torch.mm(kernel1d[:, None], kernel1d[None, :])
    channels = images.shape[1]
    pad = kernel_size // 2
    padded = F.pad(images, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, kernel2d.expand(channels, 1, kernel_size, kernel_size), groups=channels)


def as_list(guidance):
    if guidance is None:
        return []
    if isinstance(guidance, (list, tuple)):
        return list(guidance)
    return [guidance]


def layer_names(items):
    """The attention layers the PAG / SAG guidances among `items` name, in order (TypeError for an item
    that is no guidance)."""
    names = []
    for item in items:
        if isinstance(item, (PerturbedAttentionGuidance, SelfAttentionGuidance)):
            names += item.layer_names()
        elif not isinstance(item, ClassifierGuidance):
            raise TypeError(f"unsupported guidance {item!r}: use PerturbedAttentionGuidance, SelfAttentionGuidance "
                            "or ClassifierGuidance")
    return names


def validate(guidance, model):
    """Check every guidance's layer names against `model` before sampling starts (what binding a
    `denoiser.GuidedDenoiser` also does)."""
    select_blocks(model, layer_names(as_list(guidance)))

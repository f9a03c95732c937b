"""SAG, self-attention guidance (Hong et al., ICCV 2023).

The normal pass's attention map of one block marks the regions each query attends to most; the x0
prediction is blurred there, noised back to x_t with the step's own noise prediction, and run through the
model again. The term is `s * (eps - eps_degraded)` (the official `--guide_scale g` is s = g - 1).
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F

from guided_diffusion.model.attention import unwrap

from .base import GuidanceMethod, GuidanceRun, Term, option, register, resolve_blocks
from .blur import gaussian_blur

MAP_HEADS = ("official", "block")


def check_map_heads(value, name):
    if value not in MAP_HEADS:
        raise ValueError(f"{name} must be 'official' or 'block', got {value!r}")


def check_positive(value, name):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_kernel_size(value, name):
    if not (isinstance(value, int) and value >= 1 and value % 2 == 1):
        raise ValueError(f"{name} must be an odd positive integer, got {value!r}")


@register
@dataclass
class SelfAttentionGuidance(GuidanceMethod):
    """SAG on the attention map of `layer`.

    `map_heads="official"` reproduces the official SAG code: the map is computed from the block's qkv with
    the legacy head split into the model's `num_heads` flag, which differs from the block's own head count
    when `num_head_channels` is set. `map_heads="block"` uses the block's own heads and layout.
    """

    prefix = "sag"
    flag_overrides = {"scale": {"help": "SAG scale s (0 = off; negative values guide the other way; the official "
                                        "SAG scripts' --guide_scale g is s = g - 1)"}}

    blur_sigma: float = option(9.0, "SAG Gaussian blur sigma, in pixels", check=check_positive)
    layer: str = option("middle_block.1", "attention block whose map SAG uses (official 'output, depth d' is "
                                          "output_blocks.d.1; 'middle' is middle_block.1)")
    map_heads: str = option("official", "'official': the map as the official SAG code computes it; 'block': "
                                        "the block's own heads", check=check_map_heads)
    threshold: float = option(1.0, "blur where a position receives more than this total attention")
    kernel_size: int = option(31, "size of the Gaussian blur kernel (odd)", check=check_kernel_size)

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

    def bind(self, model, model_kwargs):
        block = resolve_blocks(model, [self.layer])[self.layer]
        return SelfAttentionRun(self, (block, *self.map_layout(model, block)))

    @classmethod
    def example(cls, layers, scale=1.0):
        return cls(scale=scale, layer=layers[-1], blur_sigma=1.0, kernel_size=5)


class SelfAttentionRun(GuidanceRun):
    def __init__(self, method, capture):
        super().__init__(method)
        self.captures = (capture,)

    def term(self, step, outputs, maps, scale):
        (attention_map,) = maps
        first = step.first_prediction()
        x_degraded = step.diffusion.q_sample(self.method.degrade(first["pred_xstart"], attention_map), step.t,
                                            noise=step.noise())
        eps_degraded = step.evaluate(x_degraded)
        return Term(scale * (step.eps - eps_degraded), eps_degraded, {"degraded_x": x_degraded})

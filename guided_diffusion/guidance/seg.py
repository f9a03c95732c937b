"""SEG, smoothed energy guidance (Hong, NeurIPS 2024).

The perturbed copy blurs the *queries* of the chosen self-attention blocks with a Gaussian of width
`blur_sigma` over the token grid (which blurs the attention weights); the term is `s * (eps - eps_seg)`,
one extra pass like PAG, batched with PAG's copies. Following the official SEG code: the kernel spans
ceil(6 sigma) rounded up to odd, at most the grid side (so reflect padding stays valid), and a sigma above
9999 (or inf) is the infinite blur, every query replaced by the mean query (uniform attention weights).
A sigma near 0 gives a one-tap kernel: the copy is the normal pass and the term vanishes.
"""

import math
from dataclasses import dataclass
from typing import List

from guided_diffusion.model.attention import AttentionEdit, attend

from .base import GuidanceMethod, GuidanceRun, Term, option, register, resolve_blocks
from .blur import gaussian_blur
from .pag import check_layers, parse_layers

INFINITE_BLUR = 9999.0  # the official code's threshold: larger sigmas are the infinite blur


def check_sigma(value, name):
    if not (isinstance(value, (int, float)) and not math.isnan(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of tokens or inf (uniform queries), got {value!r}")


def parse_sigma(text, flag):
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"--{flag} must be a number or 'inf', got {text!r}") from None


def kernel_size(sigma, side):
    """The official kernel size: ceil(6 sigma) made odd, clipped to the grid side (rounded down to odd)."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    return min(size, side - (side % 2 - 1))


def blur_queries(queries, sigma):
    """Blur `[n, channels, side, side]` query maps per channel (sigma > 9999: replace them by their mean)."""
    if sigma > INFINITE_BLUR:
        return queries.mean(dim=(-2, -1), keepdim=True).expand_as(queries)
    return gaussian_blur(queries, kernel_size(sigma, queries.shape[-1]), sigma)


@dataclass(frozen=True)
class BlurredQueries(AttentionEdit):
    """Softmax attention with the queries blurred over the square token grid (SEG's perturbation)."""

    sigma: float

    def attend(self, block, normed):
        qkv = block.qkv(normed)
        n, width, length = qkv.shape
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"SEG blurs queries over a square token grid, got {length} tokens")
        heads = block.num_heads
        ch = width // (3 * heads)
        # Where the q rows sit: per head [q, k, v] (legacy layout) or [q of all heads, k, v] (new order).
        parts = qkv.reshape(n, heads, 3, ch, length) if block.legacy else qkv.reshape(n, 3, heads, ch, length)
        queries = parts[:, :, 0] if block.legacy else parts[:, 0]  # [n, heads, ch, T]
        blurred = blur_queries(queries.reshape(n, heads * ch, side, side), self.sigma)
        parts = parts.clone()
        if block.legacy:
            parts[:, :, 0] = blurred.reshape(n, heads, ch, length)
        else:
            parts[:, 0] = blurred.reshape(n, heads, ch, length)
        return attend(parts.reshape(n, width, length), heads, block.legacy)


@register
@dataclass
class SmoothedEnergyGuidance(GuidanceMethod):
    """SEG on `layers` with query blur `blur_sigma` (in tokens of each block's grid)."""

    prefix = "seg"
    flag_overrides = {"scale": {"help": "SEG scale s (0 = off): eps + s (eps - eps_seg); the official code's "
                                        "seg_scale, which it fixes at 3"}}

    layers: List[str] = option(["middle_block.1"], "attention blocks whose queries SEG blurs (space or comma "
                                                   "separated); the official default is the middle block",
                               parse=parse_layers, check=check_layers)
    blur_sigma: float = option(100.0, "Gaussian width over the token grid; above 9999 or inf: uniform queries "
                                      "(the official example uses 100; try 1, 4, 16, ...)",
                               parse=parse_sigma, check=check_sigma)

    def layer_names(self):
        return list(self.layers)

    def bind(self, model, model_kwargs):
        edit = BlurredQueries(float(self.blur_sigma))
        return SmoothedEnergyRun(self, {block: edit for block in resolve_blocks(model, self.layer_names()).values()})

    @classmethod
    def example(cls, layers, scale=2.0):
        return cls(scale=scale, layers=list(layers[-2:]), blur_sigma=2.0)


class SmoothedEnergyRun(GuidanceRun):
    def __init__(self, method, copy):
        super().__init__(method)
        self.copies = (copy,)

    def term(self, step, outputs, maps, scale):
        (eps_seg,) = outputs
        return Term(scale * (step.eps - eps_seg), eps_seg)


"""PAG, perturbed-attention guidance (Ahn et al., ECCV 2024).

The perturbed copy replaces the attention map of the chosen blocks by the identity (each block outputs
its values V); the term is `s * (eps - eps_perturbed)`. The official scripts write
`eps~ = eps_perturbed + g * (eps - eps_perturbed)`, which is this with s = g - 1: their `--guide_scale 4.0`
is `scale=3.0` here.
"""

from dataclasses import dataclass
from typing import List, Optional

from guided_diffusion.model.attention import IDENTITY_MAP

from .base import GuidanceMethod, GuidanceRun, Term, option, register, resolve_blocks

# The official PAG layers for ADM ImageNet 256 (the deepest input blocks and the middle block).
OFFICIAL_PAG_LAYERS_256 = ("input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1")


def parse_layers(items, flag=None):
    """Layer names from flag values that may hold several names separated by commas or spaces."""
    if items is None:
        return None
    if isinstance(items, str):
        items = [items]
    return [name for item in items for name in str(item).replace(",", " ").split()]


def check_layers(layers, name):
    if layers is not None and not list(layers):
        raise ValueError(f"{name} needs at least one attention layer")


@register
@dataclass
class PerturbedAttentionGuidance(GuidanceMethod):
    """PAG on `layers` (None: the official ImageNet-256 set, which the model must have)."""

    prefix = "pag"
    flag_overrides = {"scale": {"help": "PAG scale s (0 = off; negative values guide the other way; the official "
                                        "scripts' --guide_scale g is s = g - 1)"}}

    layers: Optional[List[str]] = option(
        None, "attention blocks whose map PAG replaces by the identity (space or comma separated); "
              "default: the official ADM ImageNet-256 set",
        flag_default=list(OFFICIAL_PAG_LAYERS_256), parse=parse_layers, check=check_layers)

    def layer_names(self):
        return list(self.layers) if self.layers is not None else list(OFFICIAL_PAG_LAYERS_256)

    def bind(self, model, model_kwargs):
        return PerturbedAttentionRun(self, resolve_blocks(model, self.layer_names()).values())

    @classmethod
    def example(cls, layers, scale=2.0):
        """A valid setting on a model with attention blocks `layers` (the contract tests use it)."""
        return cls(scale=scale, layers=list(layers[-2:]))


class PerturbedAttentionRun(GuidanceRun):
    def __init__(self, method, blocks):
        super().__init__(method)
        self.copies = ({block: IDENTITY_MAP for block in blocks},)

    def term(self, step, outputs, maps, scale):
        (eps_perturbed,) = outputs
        return Term(scale * (step.eps - eps_perturbed), eps_perturbed)

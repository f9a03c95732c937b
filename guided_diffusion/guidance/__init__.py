"""Sampling guidance: one module per method behind one interface (`base.GuidanceMethod`).

A method is registered by importing its module here; the registration order is the order in which the
denoiser adds the methods' terms. To add a method, write `guidance/<name>.py` (a `GuidanceMethod`
dataclass with `prefix`, its fields as `option()`s, `bind` returning a `GuidanceRun`, and an `example`
for the contract tests), import it below, and add a YAML under `configs/methods/`.
"""

from guided_diffusion.model.attention import select_blocks

from .base import SCHEDULES, GuidanceMethod, GuidanceRun, Term, option, register, registered_methods  # noqa: F401
from .flags import describe, guidance_flags, guidance_from_flags, method_from_flags, network_free_methods  # noqa: F401

# The import order below is the registration order, which orders the terms.
# isort: off
from .classifier import ClassifierGuidance  # noqa: F401
from .pag import OFFICIAL_PAG_LAYERS_256, PerturbedAttentionGuidance  # noqa: F401
from .sag import SelfAttentionGuidance  # noqa: F401
from .seg import SmoothedEnergyGuidance  # noqa: F401
from .cfg import ClassifierFreeGuidance  # noqa: F401
from .autoguidance import Autoguidance  # noqa: F401
from .apg import AdaptiveProjectedGuidance  # noqa: F401
# isort: on


def as_list(guidance):
    """None, one guidance or a sequence of them, as a list."""
    if guidance is None:
        return []
    if isinstance(guidance, (list, tuple)):
        return list(guidance)
    return [guidance]


def validate(guidance, model, model_kwargs=None):
    """Check every method's layer names against `model` before sampling starts (as binding does); with the
    run's `model_kwargs` (labels: any of the right shape), also bind each method once, so that a setting the
    model cannot serve (CFG without a null label, a weak model of another family) fails before any step."""
    names = [name for method in as_list(guidance) for name in method.layer_names()]
    if names:  # a model without attention blocks (or a plain function) is fine for methods that name none
        select_blocks(model, names)
    if model_kwargs is not None:
        for method in as_list(guidance):
            method.bind(model, model_kwargs)

"""APG, adaptive projected guidance (Sadat et al., ICLR 2025), on the difference of another method.

APG takes the difference that another guidance method guides along (CFG's eps_c - eps_null, PAG's
eps - eps_perturbed, SEG's, ...), as the paper does in the x0 (denoised) space: dD = D(eps) - D(eps_other).
With momentum beta it uses the running sum dD + beta * previous (per run, negative beta as in the paper);
with a norm threshold r it scales dD down to norm r per image; then it splits dD into its part parallel to
the prediction D(eps) and the orthogonal rest, and keeps `eta` of the parallel part:

    D~ = D(eps) + s * (dD_orthogonal + eta * dD_parallel)

With r off, eta = 1 and no momentum this is the wrapped method at scale s. Applying it to PAG's and SEG's
differences is new (the paper defines it for CFG).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .base import REGISTRY, GuidanceMethod, GuidanceRun, Term, option, register
from .flags import method_from_flags


def difference_methods():
    """The prefixes APG can wrap: every registered method that adds a term from flags alone."""
    return [prefix for prefix, cls in REGISTRY.items() if cls is not AdaptiveProjectedGuidance
            and not cls.needs_network]


def check_on(value, name):
    if value not in difference_methods():
        raise ValueError(f"{name} must name the method whose difference APG reshapes, one of "
                         f"{', '.join(difference_methods())}; got {value!r}")


def check_eta(value, name):
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number (0: drop the parallel part, 1: keep it), got {value!r}")


def check_momentum(value, name):
    if not (isinstance(value, (int, float)) and -1 < value < 1):
        raise ValueError(f"{name} must be in (-1, 1) (the paper uses -0.5), got {value!r}")


def check_threshold(value, name):
    if not (isinstance(value, (int, float)) and not math.isnan(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0 (0 or inf: no clipping), got {value!r}")


def project(diff, prediction, eta):
    """`diff` split per image into its parts orthogonal and parallel to `prediction`: orthogonal + eta * parallel
    (in float64, as the reference computes it)."""
    v0, v1 = diff.double(), prediction.double()
    unit = F.normalize(v1.flatten(1), dim=1).view_as(v1)
    dims = tuple(range(1, diff.ndim))
    parallel = (v0 * unit).sum(dim=dims, keepdim=True) * unit
    return ((v0 - parallel) + eta * parallel).to(diff.dtype)


def clip_norm(diff, threshold):
    """`diff` scaled down per image to L2 norm at most `threshold` (0 or inf: unchanged)."""
    if not threshold or math.isinf(threshold):
        return diff
    norm = diff.flatten(1).norm(dim=1).view(-1, *[1] * (diff.ndim - 1))
    return diff * torch.clamp(threshold / norm, max=1.0)


@register
@dataclass
class AdaptiveProjectedGuidance(GuidanceMethod):
    """APG with its own scale on the difference of method `on` (its settings from its flags, or `inner`)."""

    prefix = "apg"
    flag_overrides = {"scale": {"help": "APG scale s (0 = off) on the difference of --apg_on, whose own flags "
                                        "(e.g. --pag_layers) set that difference; keep that method's own scale 0"}}

    on: str = option("cfg", "the method whose difference APG reshapes: cfg, pag, seg or sag", check=check_on)
    eta: float = option(0.0, "weight of the part parallel to the prediction (0: drop it, the paper's choice; 1: "
                             "keep it)", check=check_eta)
    momentum: float = option(0.0, "momentum beta of the difference's running sum (the paper: -0.5; 0: none)",
                             check=check_momentum)
    norm_threshold: float = option(0.0, "clip the x0-space difference to this L2 norm per image (0: no clipping)",
                                   check=check_threshold)
    inner: Any = option(None, flag=False)  # the wrapped method (default: `on` with its default settings)

    def __post_init__(self):
        super().__post_init__()
        if self.inner is None:
            self.inner = REGISTRY[self.on](scale=0.0)
        elif self.inner.prefix != self.on:
            raise ValueError(f"AdaptiveProjectedGuidance(on={self.on!r}) was given a {type(self.inner).__name__}")
        elif self.inner.scale != 0:  # only its difference is used: APG's own scale applies
            self.inner = dataclasses.replace(self.inner, scale=0.0)

    def flag_settings(self):
        # the wrapped method's settings too (its scale is 0), so that a manifest or a YAML names them all
        return {**self.inner.flag_settings(), **super().flag_settings()}

    @classmethod
    def from_flag_values(cls, values, args, **resources):
        inner_cls = REGISTRY[values["on"]]
        inner = method_from_flags(inner_cls, args)
        if inner.scale != 0:
            raise ValueError(f"--apg_on {values['on']} applies {inner_cls.__name__} through APG at --apg_scale: set "
                             f"--{values['on']}_scale 0, or APG and the plain method would both guide")
        return cls(**values, inner=inner, **resources)

    def layer_names(self):
        return self.inner.layer_names()

    def bind(self, model, model_kwargs):
        return AdaptiveProjectedRun(self, self.inner.bind(model, model_kwargs))

    @classmethod
    def example(cls, layers, scale=2.0):
        from .pag import PerturbedAttentionGuidance

        return cls(scale=scale, on="pag", inner=PerturbedAttentionGuidance.example(layers), eta=0.0, momentum=-0.5,
                   norm_threshold=5.0)


class AdaptiveProjectedRun(GuidanceRun):
    """The wrapped run's copies, input copies and captures, its difference reshaped; the momentum sum lasts one run."""

    def __init__(self, method, inner):
        super().__init__(method)
        self.inner = inner
        self.copies, self.input_copies, self.captures = inner.copies, inner.input_copies, inner.captures
        self.running = None

    def term(self, step, outputs, maps, scale):
        other = self.inner.term(step, outputs, maps, 1.0).other
        diffusion, x, t = step.diffusion, step.x, step.t
        denoised = diffusion.xstart_from_output(x, t, step.eps)
        diff = denoised - diffusion.xstart_from_output(x, t, other)
        method = self.method
        if method.momentum:
            self.running = diff if self.running is None else diff + method.momentum * self.running
            diff = self.running
        update = project(clip_norm(diff, method.norm_threshold), denoised, method.eta)
        guided = diffusion.output_from_xstart(x, t, denoised + scale * update)
        return Term(guided - step.eps, other)

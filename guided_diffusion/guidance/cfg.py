"""CFG, classifier-free guidance (Ho & Salimans, 2021) with the null label that class dropout trains.

The other prediction is the model's with every label replaced by the null label; the term is
`s * (eps_c - eps_null)`, so the guided prediction is `eps_null + w * (eps_c - eps_null)` with the usual
weight w = s + 1 (s = 0, i.e. w = 1, is the conditional model alone; s = -1 the unconditional one).
The null-label pass is an input copy: it runs in the same network call as the conditional one.
With PAG the terms add up to the PAG paper's combination `eps_null + w (eps_c - eps_null) + s_pag
(eps_c - eps_c_perturbed)`: PAG perturbs the conditional pass.
"""

from dataclasses import dataclass

import torch

from guided_diffusion.model.attention import unwrap

from .base import GuidanceMethod, GuidanceRun, Term, register


@register
@dataclass
class ClassifierFreeGuidance(GuidanceMethod):
    """CFG on a class-conditional model built with `--null_label True` (trained with class dropout)."""

    prefix = "cfg"
    flag_overrides = {"scale": {"help": "classifier-free guidance scale s = w - 1: eps_null + (s + 1) (eps_c - "
                                        "eps_null); needs a model with a null label (--null_label True)"}}

    def bind(self, model, model_kwargs):
        null_label = getattr(unwrap(model), "null_label", None)
        if null_label is None:
            raise ValueError("classifier-free guidance needs a model with a null label row: a class-conditional "
                             "model trained with --class_dropout_prob and loaded with --null_label True")
        if model_kwargs.get("y") is None:
            raise ValueError("classifier-free guidance needs class labels: pass model_kwargs={'y': labels}")
        return ClassifierFreeRun(self, torch.full_like(model_kwargs["y"], null_label))

    @classmethod
    def example(cls, layers, scale=1.5):
        return cls(scale=scale)


class ClassifierFreeRun(GuidanceRun):
    def __init__(self, method, null_labels):
        super().__init__(method)
        self.input_copies = ({"y": null_labels},)

    def term(self, step, outputs, maps, scale):
        (eps_null,) = outputs
        return Term(scale * (step.eps - eps_null), eps_null)

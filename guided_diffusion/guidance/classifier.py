"""Classifier guidance (Dhariwal & Nichol, 2021): `scale * grad_x log p(y | x_t)` from a noisy-image
classifier. It is a gradient, not a prediction term: the sampler step applies it after the guided
prediction, as ADM does (DDPM shifts the mean by variance * gradient, DDIM shifts the score)."""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from guided_diffusion.diffusion.schedules import per_row

from .base import GuidanceMethod, GuidanceRun, option, register


@register
@dataclass
class ClassifierGuidance(GuidanceMethod):
    """Classifier guidance with the loaded `classifier` (flags load it from --classifier_path)."""

    prefix = "classifier"
    needs_network = True
    network_field = "classifier"
    flag_overrides = {"scale": {"default": 1.0, "help": "classifier guidance scale (used only with "
                                                        "--classifier_path, as in the release; negative values "
                                                        "push away from the class)"}}

    classifier: Any = option(None, flag=False)

    def gradient(self, x, t_model, y):
        """grad_x of sum_i log_softmax(classifier(x, t))[i, y_i]."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t_model), dim=-1)
            selected = log_probs[torch.arange(len(log_probs), device=x.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0]

    def bind(self, model, model_kwargs):
        if self.classifier is None:
            raise ValueError("ClassifierGuidance needs its classifier network: pass classifier=")
        if model_kwargs.get("y") is None:
            raise ValueError("classifier guidance needs class labels: pass model_kwargs={'y': labels}")
        return ClassifierRun(self)

    @classmethod
    def example(cls, layers, scale=1.0, classifier=None):
        return cls(scale=scale, classifier=classifier)


class ClassifierRun(GuidanceRun):
    gives_gradient = True

    def gradient(self, x, t_model, model_kwargs, t_base, num_base_steps):
        scale = self.method.scale_at(t_base, num_base_steps).to(x.device)
        if not bool((scale != 0).any()):
            return None  # off at this step: the sampler takes its unguided path, bit for bit
        return self.method.gradient(x, t_model, model_kwargs["y"]) * per_row(scale, x)

"""Autoguidance (Karras et al., NeurIPS 2024): guide a model by a weaker version of itself.

The other prediction is a weak model's (a shorter-trained checkpoint of the same run, or a smaller model of
the same family, trained on the same data and diffusion); the term is `s * (eps - eps_weak)`, i.e.
EDM2's `D_weak + w (D - D_weak)` with w = s + 1. It works for unconditional models too. Both networks run
every step; the weak one gets the same labels. The sampling scripts load the weak model from
`--auto_model_path`, built with the main model's flags except those in `--auto_model_config`.
"""

from dataclasses import dataclass
from typing import Any

from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.model.attention import unwrap

from .base import GuidanceMethod, GuidanceRun, Term, option, register

# Flags that fix the diffusion process: the weak model must share them with the main model.
DIFFUSION_KEYS = ("diffusion_steps", "noise_schedule", "timestep_respacing", "predict_xstart", "rescale_timesteps",
                  "image_size", "class_cond", "num_classes")


def weak_model_flags(main_flags, config_path):
    """The weak model's flags: `main_flags` with the values of YAML `config_path` (model flags only; empty path:
    the main model's). A value that would change the diffusion or the image shape is refused."""
    if not config_path:
        return dict(main_flags)
    values = load_config(config_path)
    unknown = sorted(set(values) - set(main_flags))
    if unknown:
        raise ValueError(f"--auto_model_config {config_path}: {', '.join(unknown)} are not model flags")
    changed = [key for key in DIFFUSION_KEYS if key in values and str(values[key]) != str(main_flags[key])]
    if changed:
        raise ValueError(f"--auto_model_config {config_path} changes {', '.join(changed)}: the weak model must "
                         "share the main model's diffusion, image size and labels (remove those keys)")
    return {**main_flags, **values}


@register
@dataclass
class Autoguidance(GuidanceMethod):
    """Autoguidance by `weak_model` (flags: loaded from `model_path`, built per `model_config`)."""

    prefix = "auto"
    needs_network = True
    network_field = "weak_model"
    flag_overrides = {"scale": {"help": "autoguidance scale s = w - 1: eps_weak + (s + 1) (eps - eps_weak), "
                                        "with the weak model of --auto_model_path"}}

    model_path: str = option("", "checkpoint of the weak model: an early checkpoint of the same run or a smaller "
                                 "model of the same family and data")
    model_config: str = option("", "YAML of the weak model's flags where they differ from the main model's "
                                   "(e.g. num_channels: 32); empty: the main model's flags")
    weak_model: Any = option(None, flag=False)

    def bind(self, model, model_kwargs):
        if self.weak_model is None:
            raise ValueError("Autoguidance needs its weak model: pass weak_model= (the scripts load "
                             "--auto_model_path)")
        main, weak = unwrap(model), unwrap(self.weak_model)
        for name in ("image_size", "in_channels", "num_classes"):
            if getattr(main, name, None) != getattr(weak, name, None):
                raise ValueError(f"the weak model's {name} is {getattr(weak, name, None)}, the main model's "
                                 f"{getattr(main, name, None)}: autoguidance needs a model of the same family")
        return AutoguidanceRun(self)

    @classmethod
    def example(cls, layers, scale=1.0, weak_model=None):
        return cls(scale=scale, weak_model=weak_model)


class AutoguidanceRun(GuidanceRun):
    def term(self, step, outputs, maps, scale):
        eps_weak = step.evaluate(step.x, model=self.method.weak_model)
        return Term(scale * (step.eps - eps_weak), eps_weak)

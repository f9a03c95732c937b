"""The one check every guidance scale goes through: PAG, SAG, classifier guidance and DPS's step size zeta.

NaN or infinite scales do not fail by themselves: NaN turns every image black and inf into pure 0/255 noise,
and the manifest stores the NaN. So every constructor and every script flag calls `check_scale` first.
Negative scales pass: guiding away from the usual direction is a legitimate experiment.
"""

import math
import numbers

import torch


def check_scale(value, name):
    """Return `value` unchanged if it is a finite number (or a tensor of finite numbers); else raise a
    ValueError that names `name` (a flag such as `--pag_scale`, or `PerturbedAttentionGuidance.scale`)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got a tensor holding NaN or inf")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}; negative scales are allowed, "
                         "NaN and infinity are not")
    return value

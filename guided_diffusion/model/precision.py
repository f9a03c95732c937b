"""Inference precision: the release's fp16 conversion, or autocast for speed on today's GPUs.

`fp16` reproduces the released fp16 runs (convolutions in half precision, norms and embeddings in float32).
`autocast-bf16` / `autocast-fp16` leave the weights in float32 and let torch.autocast pick the precision
per op; outputs are returned in float32 either way.
"""

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "fp16", "autocast-bf16", "autocast-fp16")


class AutocastModel(nn.Module):
    """Runs the wrapped model under torch.autocast; `.module` keeps guidance able to reach its blocks."""

    def __init__(self, module, dtype):
        super().__init__()
        self.module = module
        self.autocast_dtype = dtype

    def forward(self, x, timesteps, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            out = self.module(x, timesteps, **kwargs)
        if isinstance(out, tuple):  # (output, attention maps) when the call's attention plan captures maps
            return (out[0].float(), *out[1:])
        return out.float()


def apply_precision(model, precision):
    """Return the model to sample with at `precision` (one of PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16":
        model.convert_to_fp16()
        return model
    if precision.startswith("autocast"):
        return AutocastModel(model, torch.bfloat16 if precision.endswith("bf16") else torch.float16)
    return model

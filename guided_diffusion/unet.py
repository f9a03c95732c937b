"""The ADM release's `guided_diffusion.unet`, kept as an import path: `model.unet` and `model.attention`."""

from guided_diffusion.model import attention as _attention
from guided_diffusion.model import unet as _unet


def __getattr__(name):
    return getattr(_unet if hasattr(_unet, name) else _attention, name)

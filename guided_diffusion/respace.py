"""The ADM release's `guided_diffusion.respace`, kept as an import path: `diffusion.respace`, with the
release's sampling methods on `SpacedDiffusion` (`sampling.release`)."""

from guided_diffusion.diffusion import respace as _respace
from guided_diffusion.sampling.release import SpacedDiffusion  # noqa: F401


def __getattr__(name):
    return getattr(_respace, name)

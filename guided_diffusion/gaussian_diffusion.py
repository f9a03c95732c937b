"""The ADM release's `guided_diffusion.gaussian_diffusion`, kept as an import path: `diffusion.process`, with
the release's sampling methods on `GaussianDiffusion` (`sampling.release`)."""

from guided_diffusion.diffusion import process as _process
from guided_diffusion.sampling.release import GaussianDiffusion  # noqa: F401


def __getattr__(name):
    return getattr(_process, name)

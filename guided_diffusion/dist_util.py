"""The ADM release's `guided_diffusion.dist_util`, kept as an import path: `runtime.distributed`."""

from guided_diffusion.runtime import distributed as _distributed


def __getattr__(name):
    return getattr(_distributed, name)

"""The ADM release's `guided_diffusion.script_util`, kept as an import path: its flags and factories
(`diffusion.factory`), with diffusions of the release's classes (`sampling.release`: `p_sample_loop`, ...)."""

import functools

from guided_diffusion.diffusion import factory as _factory
from guided_diffusion.sampling.release import SpacedDiffusion as _ReleaseSpacedDiffusion


def _with_release_sampling(build):
    @functools.wraps(build)
    def release_build(*args, **kwargs):
        return build(*args, **kwargs, diffusion_class=_ReleaseSpacedDiffusion)
    return release_build


create_model_and_diffusion = _with_release_sampling(_factory.create_model_and_diffusion)
create_classifier_and_diffusion = _with_release_sampling(_factory.create_classifier_and_diffusion)
sr_create_model_and_diffusion = _with_release_sampling(_factory.sr_create_model_and_diffusion)
create_gaussian_diffusion = _with_release_sampling(_factory.create_gaussian_diffusion)


def __getattr__(name):  # everything else: the factory module's own names
    return getattr(_factory, name)

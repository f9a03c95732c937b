"""GaussianDiffusion's steps beyond what the golden fixtures pin down."""

import torch

from guided_diffusion.script_util import create_gaussian_diffusion


def test_ddim_reverse_step_is_undone_by_the_ddim_step():
    """With an eps that does not depend on x, DDIM inversion x_t -> x_{t+1} and the DDIM step back are exact
    inverses (both follow the same straight line between x_0 and eps)."""
    diffusion = create_gaussian_diffusion(steps=100, noise_schedule="cosine", timestep_respacing="20")
    gen = torch.Generator().manual_seed(0)
    eps, x_t = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)

    def model(x, t):
        return eps

    t = torch.full((2,), 7)
    forward = diffusion.ddim_reverse_sample(model, x_t, t, clip_denoised=False)["sample"]
    back = diffusion.ddim_sample(model, forward, t + 1, clip_denoised=False)["sample"]
    torch.testing.assert_close(back, x_t, atol=1e-5, rtol=1e-5)
    assert (forward - x_t).abs().max() > 1e-2

"""The Fig. 3-style guidance picture."""

import numpy as np
import torch
from PIL import Image

from golden import build_model_and_diffusion, load_fixture
from guided_diffusion.guidance import PerturbedAttentionGuidance
from guided_diffusion.visualize import COLUMNS, guidance_snapshots, save_guidance_figure


def test_snapshots_follow_the_guided_sampler_and_figure_is_written(tmp_path):
    fx = load_fixture("pag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == "ddim_g4_deep_input_and_middle")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="ddim10")
    guidance = PerturbedAttentionGuidance(scale=case["guidance"]["scale"], layers=case["guidance"]["layers"])
    final, snaps = guidance_snapshots(diffusion, model, fx["inputs"]["ddim.noise"], guidance, steps=[9, 5, 0])
    # Recording must not change the sample: it equals the official-code fixture for the same loop.
    assert (final - fx["expected"]["ddim_g4_deep_input_and_middle.sample"]).abs().max() <= 1e-3
    assert [s["step"] for s in snaps] == [9, 5, 0] and [s["t"] for s in snaps] == [900, 500, 0]
    for snap in snaps:
        assert snap["signal"].shape == (2, 32, 32) and bool((snap["signal"] > 0).any())
        # guided = normal + s * (normal - perturbed) before clipping, so it moves away from the perturbed x0.
        assert (snap["guided"] - snap["perturbed"]).abs().mean() >= (snap["normal"] - snap["perturbed"]).abs().mean()
    path = save_guidance_figure(snaps, tmp_path / "fig.png", tile=40)
    image = np.asarray(Image.open(path))
    assert image.shape[0] == 18 + 40 * 3 and image.shape[1] == 70 + 40 * len(COLUMNS)
    assert image[18:, 70:].std() > 10  # real pictures, not a blank canvas

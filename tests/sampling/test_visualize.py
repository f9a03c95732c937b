"""The Fig. 3-style guidance picture."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.guidance import PerturbedAttentionGuidance
from guided_diffusion.sampling.pictures import (
    BAR_GAP,
    BAR_WIDTH,
    COLOUR_BAR,
    COLUMNS,
    guidance_snapshots,
    save_guidance_figure,
)

from conftest import assert_close
from golden import build_model_and_diffusion, load_fixture


@pytest.mark.golden
@pytest.mark.slow
def test_snapshots_follow_the_guided_sampler_and_figure_is_written(tmp_path):
    fx = load_fixture("pag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == "ddim_g4_deep_input_and_middle")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="ddim10")
    guidance = PerturbedAttentionGuidance(scale=case["guidance"]["scale"], layers=case["guidance"]["layers"])
    final, snaps = guidance_snapshots(diffusion, model, fx["inputs"]["ddim.noise"], guidance, steps=[9, 5, 0])
    # Recording must not change the sample: it equals the official-code fixture for the same loop.
    assert_close(final, fx["expected"]["ddim_g4_deep_input_and_middle.sample"], 1e-3, "sample while recording")
    assert [s["step"] for s in snaps] == [9, 5, 0] and [s["t"] for s in snaps] == [900, 500, 0]
    for snap in snaps:
        assert snap["signal"].shape == (2, 32, 32) and bool((snap["signal"] > 0).any())
        # guided = normal + s * (normal - perturbed) before clipping, so it moves away from the perturbed x0.
        assert (snap["guided"] - snap["perturbed"]).abs().mean() >= (snap["normal"] - snap["perturbed"]).abs().mean()
    path = save_guidance_figure(snaps, tmp_path / "fig.png", tile=40)
    image = np.asarray(Image.open(path))
    assert image.shape[0] == 18 + 40 * 3 and image.shape[1] == 70 + 40 * len(COLUMNS) + COLOUR_BAR
    assert image[18:, 70:70 + 40 * len(COLUMNS)].std() > 10  # real pictures, not a blank canvas


def test_guidance_panel_has_a_labelled_colour_bar(tmp_path):
    peaks = [0.5, 0.02]
    snaps = [{"step": i, "t": 10 * i, "normal": torch.zeros(1, 3, 8, 8), "perturbed": torch.zeros(1, 3, 8, 8),
              "guided": torch.zeros(1, 3, 8, 8), "signal": torch.linspace(0, peak, 64).reshape(1, 8, 8)}
             for i, peak in enumerate(peaks)]
    path = save_guidance_figure(snaps, tmp_path / "fig.png", tile=40)
    figure = Image.open(path)
    # the range of every row's |guidance| panel, as the labels give it
    ranges = json.loads(figure.text["guidance_range"])
    assert [(r["t"], r["min"]) for r in ranges] == [(0, 0.0), (10, 0.0)]
    assert [r["max"] for r in ranges] == pytest.approx(peaks)
    image = np.asarray(figure.convert("RGB")).astype(int)
    bar_left = 70 + 40 * len(COLUMNS) + BAR_GAP
    for row in range(2):
        top = 18 + 40 * row + 2
        bar = image[top:top + 36, bar_left + BAR_WIDTH // 2]
        assert tuple(bar[0]) == (255, 255, 0) and tuple(bar[-1]) == (0, 0, 0)  # yellow = the maximum, black = 0
        brightness = bar.sum(axis=1)
        assert (np.diff(brightness) <= 0).all() and brightness[0] > brightness[-1]
        labels = image[top:top + 36, bar_left + BAR_WIDTH + 2:]
        assert (labels[:12] < 128).any() and (labels[-12:] < 128).any()  # text at the top and at the bottom
    # the panel uses the same scale: its brightest pixel is the bar's top colour
    panel = image[18:58, 70 + 40 * 3:70 + 40 * 4]
    assert panel.reshape(-1, 3).max(axis=0).tolist() == [255, 255, 0]

"""Layer probe on the shipped digits model: movement, error, correlation, table and script outputs."""

import copy
import json

import numpy as np
import pytest
import torch

from guided_diffusion.data.datasets import to_model_range
from guided_diffusion.data.digits import load_digits_split
from guided_diffusion.model.attention import attention_blocks
from guided_diffusion.sampling.layer_probe import _pearson, _ranks, markdown_table, probe_layers
from guided_diffusion.testbeds.demo import TESTBEDS, load_demo_model
from scripts import layer_probe as script

from programs import assert_ok, run_script


@pytest.fixture(scope="module")
def digits():
    model, diffusion, _ = load_demo_model(TESTBEDS["digits"], "")
    images = to_model_range(load_digits_split(16, "heldout")[0][:6])
    return model, diffusion, images


def test_movement_and_error_mean_what_they_say(digits):
    model, diffusion, images = digits
    silent = copy.deepcopy(model)
    # A block whose output projection is zero adds nothing to its residual stream, with or without its
    # attention map: replacing the map by the identity cannot move the prediction at all.
    block = attention_blocks(silent)["output_blocks.1.1"]
    torch.nn.init.zeros_(block.proj_out.weight)
    torch.nn.init.zeros_(block.proj_out.bias)
    probe = probe_layers(silent, diffusion, images, [300, 800], ["output_blocks.1.1", "middle_block.1"], seed=3)
    assert probe.movement.shape == (2, 2, 6) and probe.error.shape == (2, 6)
    assert np.all(probe.movement[0] == 0)
    assert np.all(probe.movement[1] > 0)
    # the error is the model's eps-MSE, as training measures it on the same noise
    for ti, t in enumerate([300, 800]):
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3 + t))
        with torch.no_grad():
            mse = diffusion.training_losses(silent, images, torch.full((6,), t), noise=noise)["mse"]
        np.testing.assert_allclose(probe.error[ti], mse.numpy(), rtol=1e-5)
    again = probe_layers(silent, diffusion, images, [300, 800], ["output_blocks.1.1", "middle_block.1"], seed=3)
    np.testing.assert_array_equal(again.movement, probe.movement)
    other = probe_layers(silent, diffusion, images, [300, 800], ["output_blocks.1.1", "middle_block.1"], seed=4)
    assert not np.array_equal(other.error, probe.error)


def test_spearman_matches_its_definition():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # ties in a
    assert _pearson(_ranks(a), _ranks(b)) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    np.testing.assert_array_equal(_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [2.5, 0.0, 2.5, 1.0])


def test_bad_layers_and_timesteps_are_named(digits):
    model, diffusion, images = digits
    with pytest.raises(ValueError, match="unknown attention layer"):
        probe_layers(model, diffusion, images, [10], ["input_blocks.99.1"])
    with pytest.raises(ValueError, match="timesteps must lie in 0..999"):
        probe_layers(model, diffusion, images, [1000])
    with pytest.raises(ValueError, match="comma-separated integers"):
        script.parse_timesteps("10,x")


@pytest.mark.e2e
def test_script_writes_table_json_and_plot(tmp_path, digits):
    model = digits[0]
    # the installed console script, which must exit with status 0
    assert_ok(run_script("pag-layer-probe", "--num_images", "4", "--timesteps", "100,900", "--output_dir", tmp_path))
    data = json.loads((tmp_path / "layer_probe.json").read_text())
    blocks = list(attention_blocks(model))
    assert data["layers"] == blocks and len(blocks) == 7 and data["num_images"] == 4
    assert data["resolutions"]["middle_block.1"] == "4x4" and data["resolutions"]["input_blocks.3.1"] == "8x8"
    lines = (tmp_path / "layer_probe.md").read_text().splitlines()
    assert lines[0] == "| block | size | t=100 | t=900 | mean movement | mean ρ |"
    assert [line.split(" | ")[0].strip("| `") for line in lines[2:9]] == blocks
    assert "ρ" in lines[2]
    try:
        import matplotlib  # noqa: F401 - the plot is written only where matplotlib is installed
    except ImportError:
        assert not (tmp_path / "layer_probe.png").exists()
    else:
        from PIL import Image

        assert Image.open(tmp_path / "layer_probe.png").size[0] > 500


def test_markdown_table_formats_percentages(digits):
    model, diffusion, images = digits
    probe = probe_layers(model, diffusion, images[:4], [500], ["middle_block.1"])
    row = markdown_table(probe).splitlines()[2]
    assert f"{100 * probe.movement.mean():.2f}%" in row

"""The guidance-maps CLI on a small checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.script_util import model_and_diffusion_defaults
from scripts import guidance_maps

from golden import load_fixture
from programs import assert_ok, run_script


@pytest.mark.golden
@pytest.mark.e2e
def test_cli_writes_the_figure_and_the_samples(tmp_path):
    fx = load_fixture("pag_adm32.pt")
    checkpoint = tmp_path / "model.pt"
    torch.save(fx["state_dict"], checkpoint)
    flags = [f"--{k}={fx['config'][k]}" for k in model_and_diffusion_defaults()
             if k not in ("timestep_respacing", "num_classes")]
    out = tmp_path / "fig.png"
    # the installed console script, which must exit with status 0
    assert_ok(run_script("pag-guidance-maps", *flags, "--model_path", checkpoint, "--timestep_respacing", "ddim5",
                         "--pag_scale", "2", "--pag_layers", "middle_block.1", "--num_images", "2",
                         "--steps", "1.0,0.5,0.0", "--out", out))
    figure = np.asarray(Image.open(out))
    assert figure.shape[0] == 18 + 96 * 3  # three steps
    assert np.asarray(Image.open(tmp_path / "fig_samples.png")).shape[:2] == (32, 64)
    with pytest.raises(SystemExit, match="unknown attention layer"):
        guidance_maps.main(flags + ["--model_path", str(checkpoint), "--pag_scale", "2",
                                    "--pag_layers", "input_blocks.14.1", "--out", str(out)])
    with pytest.raises(SystemExit, match="--use_fp16 True converts the model to fp16"):
        guidance_maps.main(flags + ["--model_path", str(checkpoint), "--pag_scale", "2", "--use_fp16", "True",
                                    "--precision", "fp32", "--out", str(out)])


def test_step_positions():
    assert guidance_maps.step_indices("1.0,0.5,0.0", 25) == [24, 12, 0]
    with pytest.raises(ValueError, match="steps"):
        guidance_maps.step_indices("1.5", 25)

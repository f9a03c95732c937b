"""The guidance-maps CLI on a small checkpoint."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from guided_diffusion.script_util import diffusion_defaults, model_and_diffusion_defaults
from scripts import guidance_maps

from conftest import tiny_adm, tiny_adm_flags
from golden import load_fixture
from programs import REPO, assert_ok, run_script


@pytest.mark.golden
@pytest.mark.e2e
def test_cli_writes_the_figure_and_the_samples(tmp_path):
    fx = load_fixture("pag_adm32.pt")
    checkpoint = tmp_path / "model.pt"
    torch.save(fx["state_dict"], checkpoint)
    flags = [f"--{k}={fx['config'][k]}" for k in model_and_diffusion_defaults()
             if k in fx["config"] and k not in ("timestep_respacing", "num_classes")]
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


# A tiny class-conditional network in place of a config's model: its sampler, seed, guidance and run flags stay.
TINY_COND = dict(class_cond=True, num_classes=10, learn_sigma=True)


@pytest.mark.e2e
@pytest.mark.parametrize("config, classifier, steps", [
    ("configs/table1/adm256_cond_pag.yaml", False, ["--timestep_respacing", "20"]),  # DDPM-250: fewer steps
    ("configs/fashion32/table1/cond_cg_pag.yaml", True, []),
])
def test_cli_takes_the_samplers_table1_configs(tmp_path, config, classifier, steps):
    model, _ = tiny_adm(weights_seed=0, **TINY_COND)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    tiny = {k: v for k, v in tiny_adm_flags(**TINY_COND).items() if k not in diffusion_defaults()}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**tiny, "model_path": str(tmp_path / "model.pt"),
                                                         "pag_layers": ["middle_block.1"]}))
    out = tmp_path / "fig.png"
    result = assert_ok(run_script("pag-guidance-maps", "--config", REPO / config, "--config", tmp_path / "tiny.yaml",
                                  *steps, "--num_images", "2", "--steps", "1.0,0.0", "--out", out))
    assert Image.open(out).size[1] > 0 and (tmp_path / "fig_samples.png").exists()
    # the sampler's run flags are named once as not used here; classifier guidance is said not to be drawn
    (note,) = [line for line in result.stderr.splitlines() if "--num_samples" in line]
    assert "--output_dir" in note and "not used" in note
    warnings = [line for line in result.stderr.splitlines() if "classifier guidance" in line]
    assert len(warnings) == classifier
    if classifier:
        assert "--classifier_path" in warnings[0] and "not drawn" in warnings[0]


def test_step_positions():
    assert guidance_maps.step_indices("1.0,0.5,0.0", 25) == [24, 12, 0]
    with pytest.raises(ValueError, match="steps"):
        guidance_maps.step_indices("1.5", 25)

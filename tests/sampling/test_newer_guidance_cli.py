"""SEG, CFG (+ PAG), APG and autoguidance through `pag-image-sample`, as users run them: flags, the
manifest's record of every setting, and the one-line errors for settings that cannot work."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_ADM, tiny_adm
from programs import assert_ok, cli_flags, run_script

pytestmark = pytest.mark.e2e

COND = dict(TINY_ADM, class_cond=True, num_classes=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny class-conditional model with a null label, one without, and a smaller weak model."""
    root = tmp_path_factory.mktemp("models")
    model, _ = tiny_adm(weights_seed=0, null_label=True, **COND)
    for block in model.attention_blocks().values():  # peaked attention maps, so that SEG changes something
        torch.nn.init.normal_(block.qkv.weight, std=0.5, generator=torch.Generator().manual_seed(11))
    torch.save(model.state_dict(), root / "main.pt")
    plain, _ = tiny_adm(weights_seed=0, **COND)
    torch.save(plain.state_dict(), root / "plain.pt")
    weak, _ = tiny_adm(weights_seed=1, null_label=True, **{**COND, "channel_mult": "1,1"})
    torch.save(weak.state_dict(), root / "weak.pt")
    (root / "weak.yaml").write_text('channel_mult: "1,1"\n')
    (root / "other_diffusion.yaml").write_text("diffusion_steps: 4000\n")
    return root


def sample(models, out, *extra, model="main.pt", null_label=True):
    flags = [*cli_flags(COND), "--null_label", str(null_label), "--model_path", models / model,
             "--timestep_respacing", "ddim4", "--use_ddim", "True", "--num_samples", "2", "--batch_size", "2",
             "--progress", "False", "--output_dir", out, *extra]
    return run_script("pag-image-sample", *flags)


def images(out):
    with np.load(out / "samples_2x16x16x3.npz") as f:
        return f["arr_0"].astype(int)


def manifest(out):
    return json.loads((out / "manifest.json").read_text())["config"]


def test_each_method_samples_and_records_its_settings(models, tmp_path):
    assert_ok(sample(models, tmp_path / "unguided"))
    unguided = images(tmp_path / "unguided")
    runs = {
        "seg": ["--seg_scale", "3", "--seg_blur_sigma", "inf", "--seg_layers",
                "input_blocks.3.1,middle_block.1,output_blocks.0.1,output_blocks.1.1"],
        "cfg_pag": ["--cfg_scale", "1.5", "--pag_scale", "1", "--pag_layers", "middle_block.1"],
        "apg_pag": ["--apg_on", "pag", "--apg_scale", "2", "--apg_momentum", "-0.5", "--pag_layers",
                    "middle_block.1"],
        "auto": ["--auto_scale", "1", "--auto_model_path", models / "weak.pt", "--auto_model_config",
                 models / "weak.yaml"],
    }
    for name, flags in runs.items():
        assert_ok(sample(models, tmp_path / name, *flags))
        assert np.abs(images(tmp_path / name) - unguided).max() > 0, name
    assert manifest(tmp_path / "seg")["guidance"]["seg_blur_sigma"] == float("inf")
    assert {"cfg_scale", "pag_scale"} <= set(manifest(tmp_path / "cfg_pag")["guidance"])
    apg = manifest(tmp_path / "apg_pag")["guidance"]
    assert apg["apg_on"] == "pag" and apg["pag_layers"] == ["middle_block.1"] and apg["pag_scale"] == 0
    auto = manifest(tmp_path / "auto")["autoguidance"]
    assert auto["model"]["channel_mult"] == "1,1" and auto["scale"] == 1.0 and auto["checkpoint"]


@pytest.mark.parametrize("extra, model, null_label, message", [
    (["--cfg_scale", "1"], "plain.pt", False, "--null_label True"),
    (["--apg_on", "pag", "--apg_scale", "1", "--pag_scale", "1"], "main.pt", True, "set --pag_scale 0"),
    (["--apg_on", "cfgg", "--apg_scale", "1"], "main.pt", True, "must name the method"),
    (["--auto_scale", "1"], "main.pt", True, "--auto_scale needs --auto_model_path"),
    (["--auto_scale", "1", "--auto_model_path", "weak.pt", "--auto_model_config", "other_diffusion.yaml"],
     "main.pt", True, "changes diffusion_steps"),
    (["--auto_scale", "1", "--auto_model_path", "weak.pt"], "main.pt", True, "set --channel_mult"),
    (["--seg_scale", "1", "--seg_blur_sigma", "0"], "main.pt", True, "positive number"),
], ids=["cfg-no-null-label", "apg-twice", "apg-unknown", "auto-no-path", "auto-diffusion", "auto-shape", "seg-sigma"])
def test_settings_that_cannot_work_fail_with_one_clear_line(models, tmp_path, extra, model, null_label, message):
    extra = [str(models / item) if item.endswith((".pt", ".yaml")) else item for item in extra]
    result = sample(models, tmp_path / "out", *extra, model=model, null_label=null_label)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]

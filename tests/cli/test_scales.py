"""Guidance scales must be finite numbers: NaN and inf are refused before any model is loaded, negative scales
are allowed. The Python API (every guidance, DPS's zeta) and every script flag go through one check."""

import math

import pytest
import torch

from guided_diffusion.cli.scales import check_scale
from guided_diffusion.guidance import ClassifierGuidance, PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.inverse import create_operator, dps_sample_loop

from conftest import TINY_ADM, tiny_adm
from programs import REPO, cli_flags, run_script

BAD = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD)
def test_every_guidance_refuses_non_finite_scales(value):
    with pytest.raises(ValueError, match=r"PerturbedAttentionGuidance\.scale must be a finite number"):
        PerturbedAttentionGuidance(scale=value)
    with pytest.raises(ValueError, match=r"SelfAttentionGuidance\.scale must be a finite number"):
        SelfAttentionGuidance(scale=value)
    with pytest.raises(ValueError, match=r"ClassifierGuidance\.scale must be a finite number"):
        ClassifierGuidance(value)


def test_negative_and_zero_scales_are_allowed():
    assert PerturbedAttentionGuidance(scale=-1.5).scale == -1.5
    assert SelfAttentionGuidance(scale=0).scale == 0
    assert ClassifierGuidance(-2.0).scale == -2.0
    assert check_scale(torch.tensor([0.5, -1.0]), "zeta").tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match="must be a number"):
        check_scale("3", "--pag_scale")


@pytest.mark.parametrize("zeta", [math.nan, torch.tensor([1.0, math.inf])])
def test_dps_refuses_a_non_finite_zeta_before_sampling(zeta):
    model, diffusion = tiny_adm(image_size=8, attention_resolutions="4", timestep_respacing="2")
    operator = create_operator("inpaint_box", 8, mask_size=4)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="DPS zeta must be (a )?finite"):
        dps_sample_loop(diffusion, model, operator, torch.zeros(2, 3, 8, 8), noise=torch.zeros(2, 3, 8, 8), zeta=zeta)
    assert not calls  # not a single forward pass


# Each script with non-finite scales and a --model_path that is no checkpoint: the scale must be reported, not
# the file, so the flags were checked before loading any model.
NOT_A_CHECKPOINT = REPO / "README.md"
TINY = cli_flags(TINY_ADM)
SCRIPTS = {
    "pag-image-sample": (["--model_path", NOT_A_CHECKPOINT, *TINY, "--pag_scale", "nan", "--sag_scale", "inf",
                          "--output_dir", "{tmp}/out"], ["--pag_scale", "--sag_scale"]),
    "pag-classifier-sample": (["--model_path", NOT_A_CHECKPOINT, "--classifier_path", NOT_A_CHECKPOINT, *TINY,
                               "--classifier_scale=-inf", "--output_dir", "{tmp}/out"], ["--classifier_scale"]),
    "pag-guidance-maps": (["--model_path", NOT_A_CHECKPOINT, *TINY, "--pag_scale", "inf", "--out", "{tmp}/g.png"],
                          ["--pag_scale"]),
    "pag-inverse-sample": (["--model_path", NOT_A_CHECKPOINT, *TINY, "--data", "digits:heldout", "--zeta", "nan",
                            "--sag_scale", "nan", "--output_dir", "{tmp}/inv"], ["--zeta", "--sag_scale"]),
    "pag-demo": (["--pag_scales", "1,nan", "--checkpoint", NOT_A_CHECKPOINT, "--output_dir", "{tmp}/demo"],
                 ["--pag_scales"]),
}


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_refuse_non_finite_scales_naming_the_flag_before_loading_a_model(script, tmp_path):
    args, flags = SCRIPTS[script]
    result = run_script(script, *[str(a).replace("{tmp}", str(tmp_path)) for a in args])
    assert result.returncode != 0
    for flag in flags:
        assert f"{flag} must be a finite number" in result.stderr
    assert "Traceback" not in result.stderr
    assert "checkpoint" not in result.stderr  # the model file was never opened
    assert not list(tmp_path.iterdir())  # nothing written


def test_scale_help_says_negative_values_are_allowed():
    from guided_diffusion.sampling.run import create_sampler_parser

    text = " ".join(create_sampler_parser(None).format_help().split())
    for flag in ("--pag_scale", "--sag_scale", "--classifier_scale"):
        help_text = text.split(flag.upper().lstrip("-") + " ", 1)[1][:300]
        assert "negative" in help_text, flag

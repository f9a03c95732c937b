"""PAG and SAG reproduce the official PAG and SAG code on the golden fixtures."""

import pytest
import torch

from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.sampling.denoiser import guided_prediction

from conftest import assert_close
from golden import build_model_and_diffusion, load_fixture
from sampling_cases import run_case

# One intra-op thread: on this CPU the g = 4 DDPM step at t = 18 (psample_g4_deep_t18) reproduces pred_xstart
# within 1e-4 at one thread but only to 1.14e-4 at 2-4 threads, with this code and with the code
# before the redesign alike: the conv reductions' order moves eps by ~1e-6, which the guided step multiplies
# by 1 + 2s and pred_xstart by 1/sqrt(alpha_bar). Parity is checked where it is reproducible.
pytestmark = [pytest.mark.golden, pytest.mark.usefixtures("one_thread")]


def _cases(name):
    return [pytest.param(case["name"], id=case["name"]) for case in load_fixture(name)["cases"]]


def _check(fx, case, guidance):
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing=case["timestep_respacing"])
    out = run_case(fx, case, model, diffusion, guidance)
    for out_key, fx_key in case["expected"].items():
        assert_close(out[out_key], fx["expected"][fx_key], fx["tolerance"][fx_key], f"{case['name']}.{out_key}")
    return model, diffusion, out


@pytest.mark.parametrize("case_name", _cases("pag_adm32.pt"))
def test_pag_matches_official_code(case_name):
    fx = load_fixture("pag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == case_name)
    g = case["guidance"]
    assert g["scale"] == pytest.approx(g["guide_scale"] - 1)
    _check(fx, case, PerturbedAttentionGuidance(scale=g["scale"], layers=g["layers"]))


@pytest.mark.parametrize("case_name", _cases("sag_adm32.pt"))
def test_sag_matches_official_code(case_name):
    fx = load_fixture("sag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == case_name)
    g = case["guidance"]
    model, diffusion, out = _check(fx, case, SelfAttentionGuidance(scale=g["scale"], blur_sigma=g["blur_sigma"],
                                                                  layer=g["layer"]))
    if case["call"] == "p_sample":
        # Guidance must matter here: our unguided step is the reference's unguided ADM sample, and far from ours.
        unguided = run_case(fx, case, model, diffusion)["sample"]
        key = f"{case_name}.unguided_adm_sample"
        assert_close(unguided, fx["expected"][key], fx["tolerance"][key], key)
        assert (out["sample"] - unguided).abs().max() > 1e-2
        # The input of SAG's second pass, recorded by the reference as a debug tensor.
        details = {}
        x, t = fx["inputs"][case["inputs"]["x"]], fx["inputs"][case["inputs"]["t"]]
        with torch.no_grad():
            guided_prediction(diffusion, model, x, t, SelfAttentionGuidance(
                scale=g["scale"], blur_sigma=g["blur_sigma"], layer=g["layer"]), details=details)
        key = case["debug"]["degraded_x"]
        assert_close(details["degraded_x"][0], fx["expected"][key], fx["tolerance"][key], key)


@pytest.mark.slow
def test_scale_zero_is_unguided():
    fx = load_fixture("pag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == "ddim_g1_deep_input_and_middle")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing=case["timestep_respacing"])
    noise = fx["inputs"]["ddim.noise"]
    with torch.no_grad():
        plain = diffusion.ddim_sample_loop(model, tuple(noise.shape), noise=noise)
        for guidance in (PerturbedAttentionGuidance(scale=0.0, layers=case["guidance"]["layers"]),
                         SelfAttentionGuidance(scale=0.0, layer="output_blocks.2.1")):
            guided = diffusion.ddim_sample_loop(model, tuple(noise.shape), noise=noise, guidance=guidance)
            assert torch.equal(plain, guided)
    assert_close(plain, fx["expected"]["ddim_unguided_adm.sample"], 1e-3, "unguided")

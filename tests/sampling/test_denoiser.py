"""The guided denoiser bound once per run, the sampler steps and the one sampling loop with its callback."""

import pytest
import torch

from guided_diffusion.guidance import ClassifierGuidance, PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.model import attention as attention_module
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.steps import DDIM, DDPM, sample_loop

from golden import build_model_and_diffusion, load_fixture

LAYERS = ["input_blocks.5.1", "middle_block.1"]

pytestmark = [pytest.mark.golden, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def setup():
    fx = load_fixture("pag_adm32.pt")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="5")
    gen = torch.Generator().manual_seed(2)
    return model, diffusion, torch.randn(2, 3, 32, 32, generator=gen)


def _count_model_calls(model):
    calls = []
    return calls, model.register_forward_hook(lambda *a: calls.append(1))


def test_unknown_layers_of_all_guidances_fail_once_at_binding(setup):
    model, diffusion, _ = setup
    calls, hook = _count_model_calls(model)
    try:
        with pytest.raises(ValueError) as err:
            GuidedDenoiser(diffusion, model, [PerturbedAttentionGuidance(scale=1.0, layers=["input_blocks.99.1"]),
                                              SelfAttentionGuidance(scale=1.0, layer="output_blocks.42.1")])
    finally:
        hook.remove()
    message = str(err.value)
    assert "'input_blocks.99.1', 'output_blocks.42.1'" in message  # both names in the one error
    assert "middle_block.1" in message  # with the model's blocks
    assert calls == []
    with pytest.raises(TypeError, match="unsupported guidance"):
        GuidedDenoiser(diffusion, model, ["pag"])
    with pytest.raises(ValueError, match="class labels"):
        GuidedDenoiser(diffusion, model, ClassifierGuidance(scale=1.0, classifier=lambda x, t: x))


def test_layers_are_resolved_once_per_run(setup, monkeypatch):
    model, diffusion, noise = setup
    lookups = []
    real = attention_module.attention_blocks
    monkeypatch.setattr(attention_module, "attention_blocks", lambda m: lookups.append(1) or real(m))
    guidance = [PerturbedAttentionGuidance(scale=1.0, layers=LAYERS), SelfAttentionGuidance(scale=0.5)]
    GuidedDenoiser(diffusion, model, guidance)
    at_binding = len(lookups)
    assert at_binding > 0
    with torch.no_grad():
        diffusion.p_sample_loop(model, tuple(noise.shape), noise=noise, guidance=guidance)
    assert len(lookups) == 2 * at_binding  # the run of 5 steps resolved its layers only when it bound them


def test_sag_binds_the_model_flags_it_needs(setup):
    model, diffusion, noise = setup
    t = torch.full((2,), 3)
    bound = GuidedDenoiser(diffusion, model, SelfAttentionGuidance(scale=1.0, layer="output_blocks.2.1"))
    with torch.no_grad():
        before = bound(noise, t)["mean"]
        heads, model.num_heads = model.num_heads, 7  # a head count no block could be split into
        try:
            after = bound(noise, t)["mean"]
        finally:
            model.num_heads = heads
    assert torch.equal(before, after)


@pytest.mark.parametrize("sampler,noisy_steps", [(DDPM(), [4, 3, 2, 1]), (DDIM(0.0), []), (DDIM(0.5), [4, 3, 2, 1])])
def test_one_loop_with_a_callback(setup, sampler, noisy_steps):
    model, diffusion, noise = setup
    guidance = PerturbedAttentionGuidance(scale=2.0, layers=LAYERS)
    asked, seen = [], []

    def step_noise(i):
        asked.append(i)
        return torch.full_like(noise, 0.1 * i)

    with torch.no_grad():
        final = sample_loop(GuidedDenoiser(diffusion, model, guidance), sampler, noise, step_noise_fn=step_noise,
                            callback=seen.append)
        shim = (diffusion.p_sample_loop(model, tuple(noise.shape), noise=noise, guidance=guidance,
                                        step_noise_fn=lambda i: torch.full_like(noise, 0.1 * i))
                if isinstance(sampler, DDPM) else
                diffusion.ddim_sample_loop(model, tuple(noise.shape), noise=noise, guidance=guidance, eta=sampler.eta,
                                           step_noise_fn=lambda i: torch.full_like(noise, 0.1 * i)))
    assert asked == noisy_steps  # only steps that add noise ask for it; the last one (t = 0) does not
    assert torch.equal(final, shim)  # the release API runs the same loop
    assert [step["i"] for step in seen] == [4, 3, 2, 1, 0]
    assert torch.equal(seen[0]["x"], noise) and torch.equal(seen[-1]["sample"], final)
    for previous, step in zip(seen, seen[1:]):
        assert step["x"] is previous["sample"]
    parts = seen[2]["prediction"]
    assert len(parts["perturbed_eps"]) == 1 and torch.equal(parts["scale"][0], torch.full((2, 1, 1, 1), 2.0))
    torch.testing.assert_close(parts["guided_eps"], parts["eps"] + 2.0 * (parts["eps"] - parts["perturbed_eps"][0]))

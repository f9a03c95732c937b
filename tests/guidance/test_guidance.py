"""The guided-prediction path: batching, combination, intervals, schedules and classifier guidance."""

import pytest
import torch

from guided_diffusion.guidance import (
    ClassifierGuidance,
    GuidanceMethod,
    PerturbedAttentionGuidance,
    SelfAttentionGuidance,
)
from guided_diffusion.model.attention import AttentionPlan
from guided_diffusion.sampling.images import LabelBlind

from golden import build_model_and_diffusion, load_fixture

LAYERS = ["input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1", "middle_block.1"]


@pytest.fixture(scope="module")
def setup():
    fx = load_fixture("pag_adm32.pt")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="25")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    noise = torch.randn(2, 3, 32, 32, generator=gen)
    return model, diffusion, x, noise


def _step(diffusion, model, x, t, noise, guidance=None, **kw):
    with torch.no_grad():
        return diffusion.p_sample(model, x, torch.full((2,), t), step_noise=noise, guidance=guidance, **kw)


@pytest.mark.golden
def test_batched_pag_equals_two_separate_passes(setup):
    model, diffusion, x, noise = setup
    t = torch.full((2,), 12)
    with torch.no_grad():
        guided = diffusion.p_mean_variance(model, x, t, guidance=PerturbedAttentionGuidance(scale=3.0, layers=LAYERS))
        eps, var = diffusion.split_output(diffusion.run_model(model, x, t), x)
        plan = AttentionPlan.from_names(model, [LAYERS])
        eps_perturbed, _ = diffusion.split_output(diffusion.run_model(model, x, t, attention=plan), x)
        two_pass = diffusion.prediction_from_output(eps + 3.0 * (eps - eps_perturbed), var, x, t)
    for key in ("mean", "variance", "pred_xstart"):
        torch.testing.assert_close(guided[key], two_pass[key], atol=1e-5, rtol=0)
    assert (guided["pred_xstart"] - diffusion.p_mean_variance(model, x, t)["pred_xstart"]).abs().max() > 1e-3


@pytest.mark.golden
def test_shared_prefix_runs_once_and_perturbed_blocks_skip_q_and_k(setup):
    """The cost claims, as row counts: B rows up to the first perturbed block, 2B after it, and the
    perturbed blocks' qkv projection sees only the B normal rows (the perturbed rows compute V alone)."""
    model, diffusion, x, _ = setup
    first = int(LAYERS[0].split(".")[1])  # input_blocks.5.1: the copy happens inside input block 5
    expected = {f"input_blocks.{i}.0": 2 if i <= first else 4 for i in range(len(model.input_blocks))}
    expected.update({f"output_blocks.{i}.0": 4 for i in range(len(model.output_blocks))}, **{"middle_block.0": 4})
    for name in model.attention_blocks():
        in_prefix = name.startswith("input_blocks") and int(name.split(".")[1]) < first
        expected[f"{name}.qkv"] = 2 if name in LAYERS or in_prefix else 4
    rows = {}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(
        lambda mod, args, out, name=name: rows.setdefault(name, []).append(args[0].shape[0])) for name in expected]
    try:
        with torch.no_grad():
            diffusion.p_mean_variance(model, x, torch.full((2,), 12),
                                      guidance=PerturbedAttentionGuidance(scale=3.0, layers=LAYERS))
    finally:
        for hook in hooks:
            hook.remove()
    assert rows == {name: [count] for name, count in expected.items()}  # and each ran once: one model call


@pytest.mark.golden
def test_guidances_combine_additively(setup):
    model, diffusion, x, noise = setup
    one = _step(diffusion, model, x, 10, noise, PerturbedAttentionGuidance(scale=3.0, layers=LAYERS))
    split = _step(diffusion, model, x, 10, noise, [PerturbedAttentionGuidance(scale=1.0, layers=LAYERS),
                                                    PerturbedAttentionGuidance(scale=2.0, layers=LAYERS)])
    torch.testing.assert_close(one["sample"], split["sample"], atol=1e-5, rtol=0)
    sag_off = _step(diffusion, model, x, 10, noise, [PerturbedAttentionGuidance(scale=3.0, layers=LAYERS),
                                                      SelfAttentionGuidance(scale=0.0, layer="output_blocks.2.1")])
    assert torch.equal(one["sample"], sag_off["sample"])
    both = _step(diffusion, model, x, 10, noise, [PerturbedAttentionGuidance(scale=3.0, layers=LAYERS),
                                                   SelfAttentionGuidance(scale=1.0, layer="output_blocks.2.1")])
    assert (both["sample"] - one["sample"]).abs().max() > 1e-4


@pytest.mark.golden
def test_interval_is_in_base_timesteps(setup):
    model, diffusion, x, noise = setup
    t_index = 12
    t_base = int(diffusion.timestep_map[t_index])
    plain = _step(diffusion, model, x, t_index, noise)
    inside = PerturbedAttentionGuidance(scale=3.0, layers=LAYERS, interval=(t_base - 1, t_base + 1))
    outside = PerturbedAttentionGuidance(scale=3.0, layers=LAYERS, interval=(0, t_base - 1))
    always = PerturbedAttentionGuidance(scale=3.0, layers=LAYERS)
    assert torch.equal(_step(diffusion, model, x, t_index, noise, outside)["sample"], plain["sample"])
    assert torch.equal(_step(diffusion, model, x, t_index, noise, inside)["sample"],
                       _step(diffusion, model, x, t_index, noise, always)["sample"])


def test_scale_schedules():
    t = torch.tensor([0, 333, 999])
    torch.testing.assert_close(GuidanceMethod(2.0).scale_at(t, 1000), torch.full((3,), 2.0))
    torch.testing.assert_close(GuidanceMethod(2.0, schedule="linear").scale_at(t, 1000),
                               torch.tensor([0.0, 2 * 333 / 999, 2.0]))
    cosine = GuidanceMethod(2.0, schedule="cosine").scale_at(t, 1000)
    assert cosine[0] == 0 and cosine[2] == pytest.approx(2.0) and 0 < cosine[1] < 2 * 333 / 999
    with pytest.raises(ValueError, match="schedule"):
        GuidanceMethod(1.0, schedule="exp")


@pytest.mark.golden
def test_unknown_layer_fails_before_any_model_call(setup):
    model, diffusion, _, noise = setup
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="middle_block.1"):
            diffusion.ddim_sample_loop(model, (2, 3, 32, 32), noise=noise,
                                       guidance=PerturbedAttentionGuidance(scale=1.0, layers=["input_blocks.14.1"]))
        with pytest.raises(ValueError, match="output_blocks"):
            diffusion.p_sample_loop(model, (2, 3, 32, 32), noise=noise,
                                    guidance=SelfAttentionGuidance(scale=1.0, layer="output_blocks.42.1"))
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.golden
def test_sag_block_heads_variant_differs_from_official(setup):
    model, diffusion, x, noise = setup
    official = _step(diffusion, model, x, 20, noise, SelfAttentionGuidance(scale=1.0, layer="output_blocks.8.1"))
    block = _step(diffusion, model, x, 20, noise,
                  SelfAttentionGuidance(scale=1.0, layer="output_blocks.8.1", map_heads="block"))
    assert (official["sample"] - block["sample"]).abs().max() > 1e-4


@pytest.mark.golden
def test_classifier_guidance_object_equals_cond_fn_and_combines_with_pag(setup):
    model, diffusion, x, noise = setup
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    wrapped = lambda x_, t_: classifier(x_) * (1 + t_.float()[:, None] / 1000)  # noqa: E731 - uses t
    y = torch.tensor([3, 7])
    guidance = ClassifierGuidance(scale=2.0, classifier=wrapped)

    def cond_fn(x_, t_, y=None):
        return guidance.gradient(x_, t_, y) * 2.0

    plain = _step(diffusion, model, x, 9, noise)
    # y reaches the classifier through model_kwargs in both forms (the model itself is unconditional here).
    by_object = _step_with_y(diffusion, model, x, noise, y, guidance=guidance)
    by_fn = _step_with_y(diffusion, model, x, noise, y, cond_fn=cond_fn)
    assert torch.equal(by_object["sample"], by_fn["sample"])
    assert (by_object["sample"] - plain["sample"]).abs().max() > 1e-6
    with_pag = _step_with_y(diffusion, model, x, noise, y,
                            guidance=[guidance, PerturbedAttentionGuidance(scale=1.0, layers=LAYERS)])
    assert (with_pag["sample"] - by_object["sample"]).abs().max() > 1e-4


def _step_with_y(diffusion, model, x, noise, y, **kw):
    with torch.no_grad():
        return diffusion.p_sample(LabelBlind(model), x, torch.full((2,), 9), step_noise=noise,
                                  model_kwargs={"y": y}, **kw)

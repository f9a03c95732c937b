"""Each newer method's defining identity, its settings' errors, and its parts against independent computations:
SEG (sigma -> 0, infinite blur, the official kernel size), CFG (w = 1, w = 0, CFG + PAG as in the paper),
autoguidance (the main model as its own weak model) and APG (r off, eta = 1, no momentum; momentum, clipping
and the projection)."""

import math

import pytest
import torch

from guided_diffusion.guidance import (
    AdaptiveProjectedGuidance,
    Autoguidance,
    ClassifierFreeGuidance,
    PerturbedAttentionGuidance,
    SelfAttentionGuidance,
    SmoothedEnergyGuidance,
    registered_methods,
)
from guided_diffusion.guidance.apg import clip_norm, project
from guided_diffusion.guidance.autoguidance import weak_model_flags
from guided_diffusion.guidance.seg import BlurredQueries, kernel_size
from guided_diffusion.model.attention import AttentionPlan
from guided_diffusion.sampling.denoiser import GuidedDenoiser, stack_input_copies
from guided_diffusion.sampling.steps import DDIM, sample_loop

from conftest import tiny_adm, tiny_adm_flags

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["input_blocks.3.1", "middle_block.1"]
LABELS = torch.tensor([0, 2])


@pytest.fixture(scope="module")
def cond():
    """The tiny ADM, class-conditional with a null label, random weights and peaked attention maps."""
    model, diffusion = tiny_adm(weights_seed=3, class_cond=True, num_classes=3, null_label=True, learn_sigma=True,
                                timestep_respacing="4")
    for block in model.attention_blocks().values():
        torch.nn.init.normal_(block.qkv.weight, std=0.5, generator=torch.Generator().manual_seed(11))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return model.eval(), diffusion, x


def samples(cond, guidance, model=None):
    base, diffusion, x = cond
    denoiser = GuidedDenoiser(diffusion, model or base, guidance, model_kwargs={"y": LABELS})
    with torch.no_grad():
        return sample_loop(denoiser, DDIM(0.0), x.clone())


def prediction(cond, guidance, t=(3, 1)):
    model, diffusion, x = cond
    with torch.no_grad():
        return GuidedDenoiser(diffusion, model, guidance, model_kwargs={"y": LABELS})(x, torch.tensor(t))


def mean_output(cond, t=(3, 1), y=LABELS, plan=None):
    model, diffusion, x = cond
    with torch.no_grad():
        out = diffusion.run_model(model, x, torch.tensor(t), y=y, **({"attention": plan} if plan else {}))
    return out[:, :3]


# ------------------------------------------------------------------------------------------------
# SEG


@pytest.mark.parametrize("sigma, side, size", [(1.0, 16, 7), (2.5, 16, 15), (0.1, 16, 1), (100.0, 16, 17),
                                               (100.0, 8, 9), (100.0, 7, 7), (1.0 / 6, 8, 1), (0.17, 8, 3)])
def test_seg_kernel_size_follows_the_official_rule(sigma, side, size):
    assert kernel_size(sigma, side) == size


def test_seg_with_sigma_to_zero_is_unguided_bit_for_bit(cond):
    unguided = samples(cond, None)
    assert torch.equal(samples(cond, SmoothedEnergyGuidance(scale=3.0, layers=LAYERS, blur_sigma=1e-3)), unguided)
    guided = samples(cond, SmoothedEnergyGuidance(scale=3.0, layers=LAYERS, blur_sigma=2.0))
    assert (guided - unguided).abs().max() > 1e-3


@pytest.mark.parametrize("legacy", [True, False])
def test_seg_infinite_blur_gives_every_token_the_same_attention(legacy):
    model, _ = tiny_adm(weights_seed=4, use_new_attention_order=not legacy)
    block = model.attention_blocks()["middle_block.1"]
    torch.nn.init.normal_(block.qkv.weight, std=0.5, generator=torch.Generator().manual_seed(12))
    normed = torch.randn(2, block.channels, 16)  # a 4x4 token grid
    with torch.no_grad():
        uniform = BlurredQueries(math.inf).attend(block, normed)
        huge = BlurredQueries(1e5).attend(block, normed)  # above the official 9999: the same infinite blur
        normal = BlurredQueries(1e-3).attend(block, normed)
        # an independent computation: softmax(q_mean . k) v, per head, in the block's layout
        qkv = block.qkv(normed)
        heads, ch = block.num_heads, block.channels // block.num_heads
        if legacy:
            q, k, v = qkv.reshape(2 * heads, 3 * ch, 16).split(ch, dim=1)
        else:
            q, k, v = (part.reshape(2 * heads, ch, 16) for part in qkv.chunk(3, dim=1))
        q_mean = q.mean(dim=2, keepdim=True)
        weights = torch.softmax((q_mean * k).sum(1) / math.sqrt(ch), dim=-1)  # [B*heads, T]
        expected = (v * weights[:, None]).sum(-1, keepdim=True).expand(-1, -1, 16).reshape(2, -1, 16)
    torch.testing.assert_close(uniform, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(uniform, huge)
    assert (uniform - normal).abs().max() > 1e-2
    torch.testing.assert_close(normal, BlurredQueries(1e-4).attend(block, normed))


@pytest.mark.parametrize("sigma, match", [(0.0, "positive"), (float("nan"), "positive"), (-1.0, "positive")])
def test_seg_refuses_bad_sigmas(sigma, match):
    with pytest.raises(ValueError, match=match):
        SmoothedEnergyGuidance(scale=1.0, blur_sigma=sigma)


def test_seg_copies_batch_with_pag(cond):
    """PAG and SEG together: one pass of three copies, each term equal to its method alone."""
    pag = PerturbedAttentionGuidance(scale=1.0, layers=LAYERS)
    seg = SmoothedEnergyGuidance(scale=2.0, layers=["middle_block.1"], blur_sigma=2.0)
    both = prediction(cond, [pag, seg])
    alone = [prediction(cond, pag), prediction(cond, seg)]
    expected = both["eps"] + (alone[0]["guided_eps"] - alone[0]["eps"]) + (alone[1]["guided_eps"] - alone[1]["eps"])
    torch.testing.assert_close(both["guided_eps"], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# CFG


def test_cfg_at_w_one_is_the_conditional_model_and_at_w_zero_the_unconditional(cond):
    assert torch.equal(samples(cond, ClassifierFreeGuidance(scale=0.0)), samples(cond, None))
    null = torch.full_like(LABELS, 3)
    guided = prediction(cond, ClassifierFreeGuidance(scale=-1.0))["guided_eps"]  # w = s + 1 = 0
    torch.testing.assert_close(guided, mean_output(cond, y=null), atol=1e-6, rtol=0)
    assert (guided - mean_output(cond)).abs().max() > 1e-3


def test_cfg_with_pag_is_the_papers_combination(cond):
    """eps_null + w (eps_c - eps_null) + s (eps_c - eps_c_perturbed), w = 2.5, s = 1.5."""
    model = cond[0]
    guided = prediction(cond, [ClassifierFreeGuidance(scale=1.5), PerturbedAttentionGuidance(scale=1.5, layers=LAYERS)])
    eps_c, eps_null = mean_output(cond), mean_output(cond, y=torch.full_like(LABELS, 3))
    eps_perturbed = mean_output(cond, plan=AttentionPlan.from_names(model, [LAYERS]))
    expected = eps_null + 2.5 * (eps_c - eps_null) + 1.5 * (eps_c - eps_perturbed)
    torch.testing.assert_close(guided["guided_eps"], expected, atol=1e-5, rtol=0)


def test_cfg_null_pass_runs_in_the_same_network_call_as_the_conditional_and_pag_passes(cond):
    """CFG + PAG + SAG: one call of the U-Net per step (the null labels ride along as an input copy), and the
    terms are those of the methods alone."""
    model, diffusion, x = cond
    methods = [ClassifierFreeGuidance(scale=1.5), PerturbedAttentionGuidance(scale=1.5, layers=LAYERS),
               SelfAttentionGuidance(scale=0.5, layer="middle_block.1", blur_sigma=1.0, kernel_size=3)]
    calls = []  # (input rows, output rows) per call
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(
        (inputs[0].shape[0], (output[0] if isinstance(output, tuple) else output).shape[0])))
    try:
        together = prediction(cond, methods)
    finally:
        handle.remove()
    # In: conditional and null rows; out: those and PAG's copy. SAG's degraded input is a second call.
    assert calls == [(2 * len(x), 3 * len(x)), (len(x), len(x))]
    alone = [prediction(cond, method) for method in methods]
    expected = together["eps"] + sum(one["guided_eps"] - one["eps"] for one in alone)
    torch.testing.assert_close(together["guided_eps"], expected, atol=1e-5, rtol=0)
    cfg_term = [cls for cls in registered_methods() if cls in map(type, methods)].index(ClassifierFreeGuidance)
    torch.testing.assert_close(together["perturbed_eps"][cfg_term], mean_output(cond, y=torch.full_like(LABELS, 3)),
                               atol=1e-6, rtol=0)


def test_input_copies_of_a_plan_are_the_unedited_passes_with_their_own_labels(cond):
    """The U-Net with K = 2 copies and one input copy: rows [normal, perturbed, other labels], each equal to
    its own call, and the captured map from the normal rows."""
    model, _, x = cond
    t, other = torch.tensor([3, 1]), torch.tensor([1, 3])
    capture = [("middle_block.1", 1, False)]
    with torch.no_grad():
        plan = AttentionPlan.from_names(model, [[], [LAYERS[0]]], capture)
        both, (attention_map,) = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([LABELS, other]),
                                       attention=AttentionPlan(plan.copies, plan.captures, input_copies=1))
        normal, (alone_map,) = model(x, t, y=LABELS, attention=AttentionPlan.from_names(model, [[]], capture))
        perturbed = model(x, t, y=LABELS, attention=AttentionPlan.from_names(model, [[LAYERS[0]]]))
        relabelled = model(x, t, y=other)
        with pytest.raises(ValueError, match="3 rows does not split into a batch and 1 input copies"):
            model(x[:1].repeat(3, 1, 1, 1), t[:1].repeat(3), y=LABELS[:1].repeat(3),
                  attention=AttentionPlan(plan.copies, (), input_copies=1))
    for rows, expected in zip(both.split(len(x)), (normal, perturbed, relabelled)):
        torch.testing.assert_close(rows, expected, atol=1e-5, rtol=0)
    assert (relabelled - normal).abs().max() > 1e-3 and (perturbed - normal).abs().max() > 1e-3
    torch.testing.assert_close(attention_map, alone_map, atol=1e-6, rtol=0)


def test_an_input_copy_cannot_replace_a_model_input_that_is_not_per_row():
    x, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="'scale' is not a tensor of one row per image"):
        stack_input_copies(x, t, {"scale": 1.0}, [{"scale": 2.0}])
    x_all, t_all, kwargs = stack_input_copies(x, t, {"y": LABELS, "flag": True}, [{"y": LABELS + 1}])
    assert x_all.shape[0] == 4 and t_all.shape == (4,) and kwargs["flag"] is True
    assert kwargs["y"].tolist() == [0, 2, 1, 3]


def test_cfg_needs_a_null_label(cond):
    plain, diffusion = tiny_adm(weights_seed=3, class_cond=True, num_classes=3)
    with pytest.raises(ValueError, match="--null_label True"):
        GuidedDenoiser(diffusion, plain, ClassifierFreeGuidance(scale=1.0), model_kwargs={"y": LABELS})
    with pytest.raises(ValueError, match="class labels"):
        GuidedDenoiser(cond[1], cond[0], ClassifierFreeGuidance(scale=1.0), model_kwargs={})


# ------------------------------------------------------------------------------------------------
# Autoguidance


def test_autoguidance_by_the_model_itself_is_unguided_bit_for_bit(cond):
    model = cond[0]
    assert torch.equal(samples(cond, Autoguidance(scale=2.0, weak_model=model)), samples(cond, None))


def test_autoguidance_is_edm2s_formula(cond):
    """D_weak + w (D - D_weak) with w = s + 1, in eps; the weak model learns no variance."""
    weak, _ = tiny_adm(weights_seed=9, class_cond=True, num_classes=3, channel_mult="1,1")
    guided = prediction(cond, Autoguidance(scale=1.0, weak_model=weak.eval()))["guided_eps"]
    model, diffusion, x = cond
    with torch.no_grad():
        eps_weak = diffusion.run_model(weak, x, torch.tensor([3, 1]), y=LABELS)
    expected = eps_weak + 2.0 * (mean_output(cond) - eps_weak)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=0)


def test_autoguidance_refuses_a_weak_model_of_another_family(cond):
    other, _ = tiny_adm(weights_seed=9, image_size=8, attention_resolutions="4", class_cond=True, num_classes=3)
    with pytest.raises(ValueError, match="image_size is 8, the main model's 16"):
        GuidedDenoiser(cond[1], cond[0], Autoguidance(scale=1.0, weak_model=other), model_kwargs={"y": LABELS})
    with pytest.raises(ValueError, match="weak_model="):
        GuidedDenoiser(cond[1], cond[0], Autoguidance(scale=1.0), model_kwargs={"y": LABELS})


def test_weak_model_flags_keep_the_diffusion(tmp_path):
    main = tiny_adm_flags(diffusion_steps=1000)
    smaller = tmp_path / "weak.yaml"
    smaller.write_text("num_channels: 64\n")
    assert weak_model_flags(main, str(smaller)) == {**main, "num_channels": 64}
    assert weak_model_flags(main, "") == main
    other = tmp_path / "other.yaml"
    other.write_text("diffusion_steps: 4000\nnum_channels: 64\n")
    with pytest.raises(ValueError, match="changes diffusion_steps"):
        weak_model_flags(main, str(other))
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_chanels: 64\n")
    with pytest.raises(ValueError, match="num_chanels are not model flags"):
        weak_model_flags(main, str(typo))


# ------------------------------------------------------------------------------------------------
# APG


@pytest.mark.parametrize("inner", [PerturbedAttentionGuidance(scale=0.0, layers=LAYERS),
                                   ClassifierFreeGuidance(scale=0.0),
                                   SmoothedEnergyGuidance(scale=0.0, layers=LAYERS, blur_sigma=2.0)],
                         ids=["pag", "cfg", "seg"])
def test_apg_without_clipping_projection_or_momentum_is_the_wrapped_method(cond, inner):
    apg = AdaptiveProjectedGuidance(scale=2.0, on=inner.prefix, inner=inner, eta=1.0, momentum=0.0,
                                    norm_threshold=math.inf)
    plain = type(inner)(**{**inner.settings(), "scale": 2.0})
    torch.testing.assert_close(prediction(cond, apg)["guided_eps"], prediction(cond, plain)["guided_eps"],
                               atol=1e-5, rtol=0)
    # eta = 0: the x0-space update is the difference's part orthogonal to the x0 prediction, and not zero
    _, diffusion, x = cond
    t = torch.tensor([3, 1])
    guided = prediction(cond, AdaptiveProjectedGuidance(scale=2.0, on=inner.prefix, inner=inner))
    denoised = diffusion.xstart_from_output(x, t, guided["eps"])
    update = (diffusion.xstart_from_output(x, t, guided["guided_eps"]) - denoised).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(update, denoised.flatten(1), dim=1)
    assert cosine.abs().max() < 1e-3 and update.norm(dim=1).min() > 1e-4  # plain PAG, CFG: 1e-2


def test_apg_projection_and_clipping():
    gen = torch.Generator().manual_seed(0)
    diff, pred = torch.randn(3, 3, 4, 4, generator=gen), torch.randn(3, 3, 4, 4, generator=gen)
    orthogonal = project(diff, pred, 0.0)
    assert (orthogonal * pred).sum(dim=(1, 2, 3)).abs().max() < 1e-5
    parallel = diff - orthogonal  # the rest is a multiple of pred per image
    ratio = parallel / pred
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(project(diff, pred, 0.5), orthogonal + 0.5 * parallel, atol=1e-6, rtol=0)
    norms = diff.flatten(1).norm(dim=1)
    clipped = clip_norm(diff, float(norms.min()))
    torch.testing.assert_close(clipped.flatten(1).norm(dim=1), norms.min().expand(3), atol=1e-5, rtol=1e-5)
    assert clip_norm(diff, 0.0) is diff and torch.equal(clip_norm(diff, 1e9), diff)


def test_apg_momentum_accumulates_within_a_run_only(cond):
    """Two calls at the same step: the second difference is (1 + beta) times the first (eta = 1, no clipping)."""
    model, diffusion, x = cond
    apg = AdaptiveProjectedGuidance(scale=1.0, on="cfg", eta=1.0, momentum=-0.5)
    denoiser = GuidedDenoiser(diffusion, model, apg, model_kwargs={"y": LABELS})
    t = torch.tensor([3, 1])
    with torch.no_grad():
        first, second = denoiser(x, t), denoiser(x, t)
        fresh = GuidedDenoiser(diffusion, model, apg, model_kwargs={"y": LABELS})(x, t)
    step1, step2 = first["guided_eps"] - first["eps"], second["guided_eps"] - second["eps"]
    torch.testing.assert_close(step2, 0.5 * step1, atol=1e-5, rtol=0)
    torch.testing.assert_close(fresh["guided_eps"], first["guided_eps"], atol=0, rtol=0)


@pytest.mark.parametrize("settings, match", [
    (dict(on="apg"), "--apg_on|on must name"), (dict(on="classifier"), "must name"), (dict(momentum=1.0), r"\(-1, 1\)"),
    (dict(norm_threshold=-1.0), ">= 0"), (dict(eta=math.nan), "finite")])
def test_apg_refuses_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveProjectedGuidance(scale=1.0, **settings)

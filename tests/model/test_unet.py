"""The U-Net and its attention beyond what the fixtures pin down: layer errors, per-call perturbation, fp16,
batch invariance, the super-resolution model, classifier pools, gradient checkpointing."""

import pytest
import torch

from guided_diffusion.model.attention import IDENTITY_MAP, AttentionPlan, attend, attention_blocks, split_heads, unwrap
from guided_diffusion.model.precision import apply_precision
from guided_diffusion.script_util import create_model_and_diffusion

from conftest import assert_close
from golden import build_model_and_diffusion, load_fixture, model_flags


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("dtype,autocast", [(torch.float32, False), (torch.bfloat16, True), (torch.float32, True),
                                            (torch.float16, False)])
def test_attend_is_sdpa_bit_for_bit(legacy, dtype, autocast):
    """`attend` spells out SDPA's math path (which the samples and the fixtures were made with)."""
    torch.manual_seed(0)
    for batch, heads, ch, length in ((1, 4, 16, 64), (5, 3, 20, 65), (16, 8, 16, 256)):
        qkv = torch.randn(batch, 3 * heads * ch, length).to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            q, k, v = (part.transpose(1, 2) for part in split_heads(qkv, heads, legacy))
            expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            actual = attend(qkv, heads, legacy)
        assert actual.dtype == expected.dtype
        assert torch.equal(actual, expected.reshape(batch, -1, length))


@pytest.fixture(scope="module")
def adm32():
    fx = load_fixture("model_adm32_uncond.pt")
    model, _ = build_model_and_diffusion(fx)
    return fx, model


@pytest.mark.golden
def test_unknown_layer_lists_valid_names(adm32):
    fx, model = adm32
    with pytest.raises(ValueError) as err:
        AttentionPlan.from_names(model, [["middle_block.1", "input_blocks.99.1"]])
    assert "input_blocks.99.1" in str(err.value)
    for name in fx["config"]["attention_blocks"]:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="output_blocks.8.1"):
        AttentionPlan.from_names(model, [[], ["middle_block.0"]])  # a ResBlock, not an attention block


@pytest.mark.golden
def test_layers_are_found_inside_compiled_and_precision_wrappers(adm32):
    """A torch.compile'd model (which has no truth value) and the autocast wrapper around it still expose
    their attention blocks: the perturbation plan is built on the U-Net inside."""
    fx, model = adm32
    wrapped = apply_precision(torch.compile(model), "autocast-bf16")
    assert unwrap(wrapped) is model
    assert list(attention_blocks(wrapped)) == list(fx["config"]["attention_blocks"])


@pytest.mark.golden
def test_perturbing_changes_output_and_nothing_else_does(adm32):
    fx, model = adm32
    x, t = fx["inputs"]["x"], fx["inputs"]["t"]
    with torch.no_grad():
        plain = model(x, t)
        assert torch.equal(model(x, t, attention=AttentionPlan.from_names(model, [[]])), plain)
        perturbed = model(x, t, attention=AttentionPlan.from_names(model, [["output_blocks.8.1"]]))
        assert (perturbed - plain).abs().max() > 1e-3
        # Nothing stays on the modules: the next plain call is the plain output again.
        assert torch.equal(model(x, t), plain)
        assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.golden
def test_per_row_edits_are_per_call(adm32):
    fx, model = adm32
    block = model.attention_blocks()["middle_block.1"]
    h = torch.randn(2, block.channels, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, perturbed = block(h), block(h, row_edits=[IDENTITY_MAP, IDENTITY_MAP])
        mixed = block(h, row_edits=[None, IDENTITY_MAP])
        assert torch.equal(block(h), plain)  # nothing of the last call stayed on the block
    assert (perturbed - plain).abs().max() > 1e-3
    torch.testing.assert_close(mixed[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], perturbed[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one entry per batch row"):
        block(h, row_edits=[IDENTITY_MAP])


@pytest.mark.golden
def test_output_is_batch_size_invariant_on_cpu(adm32):
    _, model = adm32
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, 3, 32, 32, generator=gen), torch.full((5,), 500)
    with torch.no_grad():
        full = model(x, t)
        assert torch.equal(model(x[:3], t[:3]), full[:3])
        assert torch.equal(model(x[2:4], t[2:4]), full[2:4])


@pytest.mark.golden
def test_release_fp16_conversion_keeps_weights_and_outputs(adm32):
    fx, _ = adm32
    model, _ = build_model_and_diffusion(fx)
    x, t = fx["inputs"]["x"], fx["inputs"]["t"]
    with torch.no_grad():
        reference = model(x, t)
        model.convert_to_fp16()
        assert model.input_blocks[0][0].weight.dtype == torch.float16
        assert model.time_embed[0].weight.dtype == torch.float32  # the release converts convolutions only
        out = model(x, t)
    assert out.dtype == torch.float32
    assert_close(out, reference, 0.05, "fp16 output")
    model.convert_to_fp32()
    with torch.no_grad():
        assert_close(model(x, t), reference, 0.05, "output after convert_to_fp32")


@pytest.mark.golden
@pytest.mark.parametrize("kind", ["pag", "sag"])
def test_autocast_precision_runs_guidance_and_stays_close(kind):
    from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
    from guided_diffusion.model.precision import apply_precision

    fx = load_fixture("model_adm32_uncond.pt")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="10")
    x, t = fx["inputs"]["x"], torch.tensor([5, 5])
    fast = apply_precision(model, "autocast-bf16")
    guidance = (PerturbedAttentionGuidance(scale=1.0, layers=["middle_block.1"]) if kind == "pag"
                else SelfAttentionGuidance(scale=1.0, layer="output_blocks.2.1"))  # SAG's maps pass the wrapper
    with torch.no_grad():
        reference = diffusion.p_mean_variance(model, x, t, guidance=guidance)["mean"]
        out = diffusion.p_mean_variance(fast, x, t, guidance=guidance)["mean"]
    assert out.dtype == torch.float32
    relative = ((out - reference).norm() / reference.norm()).item()
    assert 0 < relative < 0.05  # bf16 really ran, and stayed close
    with pytest.raises(ValueError, match="autocast-bf16"):
        apply_precision(model, "int8")


@pytest.mark.golden
def test_sag_map_is_returned_from_the_normal_rows_even_with_pag_copies():
    fx = load_fixture("model_adm32_uncond.pt")
    model, _ = build_model_and_diffusion(fx)
    x, t = fx["inputs"]["x"], fx["inputs"]["t"]
    capture = [("output_blocks.2.1", 4, True)]
    with torch.no_grad():
        plain = model(x, t)
        out, (attention_map,) = model(x, t, attention=AttentionPlan.from_names(model, [()], capture))
        assert torch.equal(out, plain)  # capturing changes nothing
        assert attention_map.shape == (len(x), 64, 64)
        torch.testing.assert_close(attention_map.sum(-1), torch.ones(len(x), 64))  # softmax rows
        # Copy 1 perturbs this block, copy 2 does not: the map must still be the normal rows'.
        both, (again,) = model(x, t, attention=AttentionPlan.from_names(
            model, [(), ["output_blocks.2.1"], ["middle_block.1"]], capture))
    assert both.shape[0] == 3 * len(x)
    torch.testing.assert_close(again, attention_map, atol=1e-6, rtol=0)
    block = model.attention_blocks()["output_blocks.2.1"]
    assert not any("capture" in name or "identity" in name for name in vars(block))  # no state on the module
    with pytest.raises(ValueError, match="first copy"):
        AttentionPlan.from_names(model, [["output_blocks.2.1"]], capture)


def test_super_resolution_model_conditions_on_low_res():
    from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults

    flags = sr_model_and_diffusion_defaults()
    flags.update(large_size=64, small_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="8",
                 learn_sigma=True, num_head_channels=16)
    model, _ = sr_create_model_and_diffusion(**flags)
    model.eval()
    torch.manual_seed(0)
    for p in model.parameters():  # the release zero-initialises the output layers: draw every weight
        p.data.normal_(0, 0.05)
    assert model.input_blocks[0][0].weight.shape[1] == 6  # noisy image + upsampled low-res image
    gen = torch.Generator().manual_seed(0)
    x, low = torch.randn(2, 3, 64, 64, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 900]), low_res=low)
        assert out.shape == (2, 6, 64, 64)
        assert (model(x, torch.tensor([10, 900]), low_res=-low) - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="low_res"):
        model(x, torch.tensor([10, 900]))


@pytest.mark.parametrize("pool", ["adaptive", "spatial", "spatial_v2"])
def test_classifier_pools(pool):
    from guided_diffusion.script_util import classifier_defaults, create_classifier

    flags = classifier_defaults()
    flags.update(image_size=64, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                 classifier_pool=pool)
    classifier = create_classifier(**flags).eval()
    with torch.no_grad():
        logits = classifier(torch.randn(2, 3, 64, 64), torch.tensor([0, 999]))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="classifier pool"):
        create_classifier(**{**flags, "classifier_pool": "max"})


@pytest.mark.golden
def test_gradient_checkpointing_gives_the_same_gradients():
    fx = load_fixture("model_adm32_uncond.pt")
    grads = []
    for use_checkpoint in (False, True):
        model, diffusion = create_model_and_diffusion(**model_flags(fx, use_checkpoint=use_checkpoint, dropout=0.0))
        model.load_state_dict(fx["state_dict"])
        loss = diffusion.training_losses(model, fx["inputs"]["x"].clamp(-1, 1), fx["inputs"]["t"],
                                         noise=torch.ones_like(fx["inputs"]["x"]))["loss"].sum()
        loss.backward()
        grads.append(model.input_blocks[1][1].qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)

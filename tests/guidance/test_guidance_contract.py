"""The contract every registered guidance method keeps, tested by being registered.

Each method supplies `example(layers, scale=...)` (a valid setting on a model with attention blocks
`layers`); these tests run it on a tiny random ADM: unknown layers fail at binding with the model's blocks,
scale 0 and an empty interval give the unguided samples bit for bit, the batched copies equal separate
forward passes, scales are per row, a run's state is fresh for every run, and the flags, YAML keys and
manifest entries come from the method's fields.
"""

import dataclasses
import json

import pytest
import torch

from guided_diffusion.cli.flags import create_parser, parse
from guided_diffusion.guidance import describe, guidance_flags, method_from_flags, registered_methods
from guided_diffusion.model.attention import AttentionPlan
from guided_diffusion.sampling.denoiser import GuidedDenoiser, stack_input_copies
from guided_diffusion.sampling.steps import DDIM, sample_loop
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.unet import EncoderUNetModel

METHODS = registered_methods()
IDS = [cls.prefix for cls in METHODS]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # class-conditional with a null label (3 classes), so that every method, CFG included, runs on it
    flags = {**model_and_diffusion_defaults(), "image_size": 16, "num_channels": 32, "channel_mult": "1,2",
             "num_res_blocks": 1, "attention_resolutions": "8", "num_head_channels": 16, "learn_sigma": True,
             "timestep_respacing": "4", "class_cond": True, "num_classes": 3, "null_label": True}
    model, diffusion = create_model_and_diffusion(**flags)
    weak, _ = create_model_and_diffusion(**{**flags, "channel_mult": "1,1", "learn_sigma": False})
    for p in [*model.parameters(), *weak.parameters()]:  # ADM zero-initialises output layers: make every branch matter
        torch.nn.init.normal_(p, std=0.05)
    for block in model.attention_blocks().values():  # peaked attention maps, so that blurring queries matters
        torch.nn.init.normal_(block.qkv.weight, std=0.5)
    classifier = EncoderUNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                                  attention_resolutions=(), channel_mult=(1, 2), pool="adaptive")
    for p in classifier.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.eval(), classifier.eval(), weak.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    return model, diffusion, {"classifier": classifier, "weak_model": weak}, x


def _networks(cls, tiny):
    """The loaded network a method needs (classifier, weak model), as its keyword."""
    return {cls.network_field: tiny[2][cls.network_field]} if cls.needs_network else {}


def _example(cls, tiny, layers=None, **overrides):
    model = tiny[0]
    method = cls.example(list(model.attention_blocks()) if layers is None else layers, **_networks(cls, tiny))
    return dataclasses.replace(method, **overrides) if overrides else method


def _samples(tiny, guidance):
    model, diffusion, _, x = tiny
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs={"y": torch.tensor([0, 2])})
    with torch.no_grad():
        return sample_loop(denoiser, DDIM(0.0), x.clone())


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_unknown_layers_fail_at_binding_with_the_blocks(cls, tiny):
    model, diffusion, _, _ = tiny
    if not _example(cls, tiny).layer_names():  # a method that names no block has nothing to resolve
        return
    bad = _example(cls, tiny, layers=["input_blocks.99.1", "input_blocks.99.1"])
    with pytest.raises(ValueError) as err:
        GuidedDenoiser(diffusion, model, bad, model_kwargs={"y": torch.tensor([0, 2])})
    assert "input_blocks.99.1" in str(err.value)
    for name in model.attention_blocks():
        assert name in str(err.value)


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_scale_zero_and_an_empty_interval_give_the_unguided_samples(cls, tiny):
    unguided = _samples(tiny, None)
    guided = _samples(tiny, _example(cls, tiny))
    assert (guided - unguided).abs().max() > 1e-4  # the example does guide
    assert torch.equal(_samples(tiny, _example(cls, tiny, scale=0.0)), unguided)
    steps = set(tiny[1].timestep_map.tolist())
    gap = next(t for t in range(1000) if t not in steps)  # a base timestep that no step of the run visits
    assert torch.equal(_samples(tiny, _example(cls, tiny, interval=(gap, gap))), unguided)


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_batched_copies_equal_separate_forward_passes(cls, tiny):
    """The copies (edited attention) and the input copies (other model inputs) of a run, in one call, equal
    their own forward passes, each one different from the normal pass."""
    model, diffusion, _, x = tiny
    y = torch.tensor([0, 2])
    run = _example(cls, tiny).bind(model, {"y": y})
    t = diffusion.model_timesteps(torch.tensor([3, 1]))
    copies = ({},) + tuple(run.copies)
    with torch.no_grad():
        x_all, t_all, kwargs = stack_input_copies(x, t, {"y": y}, run.input_copies)
        batched = model(x_all, t_all, **kwargs, attention=AttentionPlan(copies, (), len(run.input_copies)))
        separate = [model(x, t, y=y, attention=AttentionPlan((copy,))) for copy in copies]
        separate += [model(x, t, **{"y": y, **inputs}) for inputs in run.input_copies]
    assert batched.shape[0] == len(separate) * len(x)
    for k, alone in enumerate(separate):
        torch.testing.assert_close(batched[k * len(x):(k + 1) * len(x)], alone, atol=1e-5, rtol=0)
        if k:
            assert (alone - batched[:len(x)]).abs().max() > 1e-4  # each copy is a real perturbation


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_scales_are_per_row(cls, tiny):
    """Rows at different steps: a row outside the interval is sampled as unguided, a row inside as guided."""
    model, diffusion, _, x = tiny
    t = torch.tensor([3, 1])
    hi_step = int(diffusion.timestep_map[3])
    only_first = _example(cls, tiny, interval=(hi_step, hi_step))
    step_noise = torch.zeros_like(x)

    def step(guidance):
        denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs={"y": torch.tensor([0, 2])})
        with torch.no_grad():
            return DDIM(0.0).step(denoiser, x, t, step_noise)["sample"]

    mixed, guided, unguided = step(only_first), step(_example(cls, tiny)), step(None)
    torch.testing.assert_close(mixed[0], guided[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], unguided[1], atol=1e-5, rtol=0)
    assert (guided[0] - unguided[0]).abs().max() > 1e-4


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_state_is_fresh_for_each_run(cls, tiny):
    method = _example(cls, tiny)
    model = tiny[0]
    first, second = method.bind(model, {"y": torch.tensor([0, 2])}), method.bind(model, {"y": torch.tensor([0, 2])})
    assert first is not second and first.method is method
    assert torch.equal(_samples(tiny, method), _samples(tiny, method))  # nothing carried from run to run


@pytest.mark.parametrize("cls", METHODS, ids=IDS)
def test_flags_yaml_and_describe_come_from_the_fields(cls, tiny, tmp_path):
    group = guidance_flags([cls])
    fields = [f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]
    assert group.names == [f"{cls.prefix}_{name}" for name in fields]
    for flag in group.flags:
        assert flag.help and flag.help != "release flag"
    method = _example(cls, tiny, scale=1.5)
    settings = describe([method])
    assert set(group.names) <= set(settings) <= set(guidance_flags().names)  # a wrapper names its inner method too
    # the manifest entries, written as a YAML config, give back the same method
    config = tmp_path / "guidance.yaml"
    config.write_text("".join(f"{key}: {_yaml(value)}\n" for key, value in settings.items()))
    args = parse(create_parser("test", [guidance_flags()]), ["--config", str(config)])
    assert method_from_flags(cls, args, **_networks(cls, tiny)) == method
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(method, scale=float("nan"))


def _yaml(value):
    return json.dumps(value)  # JSON is YAML

"""A checkpoint that does not fit the flags names the flags that actually differ, read from the state dict's
shapes and key names: width, channel multipliers, residual blocks, attention levels (relative to the image
size, which no checkpoint records), output channels, conditioning, scale-shift norm and up/down-sampling."""

import os
import re

import pytest
import torch

from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.model.checkpoints import CheckpointMismatchError, infer_model_flags, load_checkpoint
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

from conftest import tiny_adm, tiny_adm_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "checkpoints", "digits_adm16_ema.pt")  # configs/digits/model.yaml
FASHION_UNCOND = os.path.join(ROOT, "checkpoints", "fashion32_uncond_ema.pt")  # configs/fashion32/model.yaml
FASHION_COND = os.path.join(ROOT, "checkpoints", "fashion32_cond_ema.pt")  # configs/fashion32/cond.yaml
DIGITS_CONFIG = [os.path.join(ROOT, "configs", "digits", "model.yaml")]
FASHION_CONFIG = [os.path.join(ROOT, "configs", "fashion32", "model.yaml")]
FASHION_COND_CONFIG = [os.path.join(ROOT, "configs", "fashion32", "cond.yaml")]  # the shipped model's own config
CLASSIFIER_CONFIG = os.path.join(ROOT, "configs", "fashion32", "classifier.yaml")

INFERRED = ("num_channels", "channel_mult", "num_res_blocks", "learn_sigma", "class_cond", "use_scale_shift_norm",
            "resblock_updown")


def config_flags(files, **overrides):
    flags = model_and_diffusion_defaults()
    for path in files:
        flags.update({k: v for k, v in load_config(path).items() if k in flags})
    flags.update(overrides)
    return flags


def config_model(files, **overrides):
    return create_model_and_diffusion(**config_flags(files, **overrides))[0]


def mismatch(model, state):
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(model, state)
    return str(error.value)


def named_flags(message):
    return set(re.findall(r"--\w+", message))


def flags_in(hints):
    """The flags that hints like "--class_cond True --num_classes 10" name: the only ones the message may name."""
    return {word for hint in hints for word in hint.split() if word.startswith("--")}


# --------------------------------------------------------------------------------------------------
# Inference from the state dict


def test_infer_model_flags_of_the_shipped_checkpoints():
    digits = infer_model_flags(torch.load(DIGITS, weights_only=True), image_size=16)
    want = config_flags(DIGITS_CONFIG)
    assert {k: digits[k] for k in INFERRED} == {k: want[k] for k in INFERRED}
    assert digits["attention_resolutions"] == "8,4" and digits["attention_downsampling"] == (2, 4)
    assert "image_size" not in digits  # not recorded in any weight
    fashion = infer_model_flags(torch.load(FASHION_COND, weights_only=True), image_size=32)
    want = config_flags(FASHION_COND_CONFIG)
    assert {k: fashion[k] for k in INFERRED} == {k: want[k] for k in INFERRED}
    assert fashion["attention_resolutions"] == "16,8" and fashion["label_rows"] == 11  # 10 classes + the null label
    without_size = infer_model_flags(torch.load(FASHION_UNCOND, weights_only=True))
    assert "attention_resolutions" not in without_size and without_size["attention_downsampling"] == (2, 4)
    assert without_size["class_cond"] is False and "label_rows" not in without_size


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(num_channels=64, channel_mult="1,1,2", num_res_blocks=2),
    dict(attention_resolutions="16,4", resblock_updown=True, learn_sigma=True),
    dict(use_scale_shift_norm=False, class_cond=True, num_classes=7, channel_mult="1,2,2,4",
         attention_resolutions="8,2"),
    dict(num_res_blocks=0, channel_mult="1,2,3", attention_resolutions="4", resblock_updown=True),
])
def test_infer_model_flags_gives_back_the_flags_a_model_was_built_with(overrides):
    flags = tiny_adm_flags(**overrides)
    model, _ = tiny_adm(**overrides)
    inferred = infer_model_flags(model.state_dict(), image_size=flags["image_size"])
    assert {k: inferred[k] for k in INFERRED} == {k: flags[k] for k in INFERRED}
    assert sorted(map(int, inferred["attention_resolutions"].split(","))) == sorted(
        int(r) for r in flags["attention_resolutions"].split(",") if flags["image_size"] // int(r) < 2 ** len(
            flags["channel_mult"].split(",")))


# --------------------------------------------------------------------------------------------------
# Tiny models that differ in one or two flags


@pytest.mark.parametrize("checkpoint, flags, expected", [
    (dict(num_channels=64), {}, ["--num_channels 64"]),
    (dict(channel_mult="1,1"), {}, ["--channel_mult 1,1"]),
    (dict(channel_mult="1,2,2"), {}, ["--channel_mult 1,2,2"]),
    (dict(num_res_blocks=2), {}, ["--num_res_blocks 2"]),
    (dict(attention_resolutions="16,8"), {}, ["--attention_resolutions 16,8"]),
    (dict(learn_sigma=True), {}, ["--learn_sigma True"]),
    (dict(use_scale_shift_norm=False), {}, ["--use_scale_shift_norm False"]),
    (dict(resblock_updown=True), {}, ["--resblock_updown True"]),
    (dict(class_cond=True, num_classes=10), {}, ["--class_cond True --num_classes 10",
                                                 "--num_classes 9 --null_label True"]),
    (dict(class_cond=True, num_classes=10), dict(class_cond=True), ["--num_classes 10"]),
    (dict(class_cond=True, num_classes=10, null_label=True), dict(class_cond=True, num_classes=10),
     ["--null_label True"]),
    (dict(num_channels=64, use_scale_shift_norm=False), {}, ["--num_channels 64", "--use_scale_shift_norm False"]),
    (dict(num_channels=64, channel_mult="1,1"), {}, ["--num_channels 64", "--channel_mult 1,1"]),
    (dict(num_res_blocks=2, learn_sigma=True, resblock_updown=True), {},
     ["--num_res_blocks 2", "--learn_sigma True", "--resblock_updown True"]),
])
def test_mismatch_names_exactly_the_flags_that_differ(checkpoint, flags, expected):
    state = tiny_adm(**checkpoint)[0].state_dict()
    message = mismatch(tiny_adm(**flags)[0], state)
    for hint in expected:
        assert hint in message, message
    assert named_flags(message) == flags_in(expected), message


def test_attention_at_another_level_names_both_interchangeable_flags():
    """Attention at full size (16 px) in a 16 px model is also attention at 8 px in an 8 px model."""
    message = mismatch(tiny_adm()[0], tiny_adm(attention_resolutions="16")[0].state_dict())
    assert "--attention_resolutions 16" in message and "--image_size 8" in message, message
    assert named_flags(message) == {"--attention_resolutions", "--image_size"}, message


def test_wrong_image_size_is_named():
    """Trained at 16 px with attention at 8 px; the flags say 32 px, so attention at 8 px is a level too deep."""
    message = mismatch(tiny_adm(image_size=32)[0], tiny_adm()[0].state_dict())
    assert "--image_size 16" in message and "--attention_resolutions 16" in message, message
    assert named_flags(message) == {"--image_size", "--attention_resolutions"}, message


# --------------------------------------------------------------------------------------------------
# The shipped checkpoints with the wrong config


def test_shipped_checkpoint_loads_with_its_own_config():
    load_checkpoint(config_model(DIGITS_CONFIG), DIGITS)
    load_checkpoint(config_model(FASHION_COND_CONFIG), FASHION_COND)


@pytest.mark.parametrize("checkpoint, files, overrides, expected", [
    (DIGITS, FASHION_CONFIG, {}, ["--channel_mult 1,1,1"]),
    (DIGITS, FASHION_CONFIG, dict(use_scale_shift_norm=False), ["--channel_mult 1,1,1", "--use_scale_shift_norm True"]),
    (DIGITS, DIGITS_CONFIG, dict(use_scale_shift_norm=False), ["--use_scale_shift_norm True"]),
    (DIGITS, DIGITS_CONFIG, dict(image_size=32), ["--image_size 16", "--attention_resolutions 16,8"]),
    (FASHION_UNCOND, DIGITS_CONFIG, {}, ["--channel_mult 1,2,2"]),
    (FASHION_COND, FASHION_CONFIG, {}, ["--class_cond True --num_classes 11", "--num_classes 10 --null_label True"]),
    (FASHION_UNCOND, FASHION_COND_CONFIG, {}, ["--class_cond False"]),
])
def test_shipped_checkpoint_with_another_config_names_the_flags_that_differ(checkpoint, files, overrides, expected):
    message = mismatch(config_model(files, **overrides), checkpoint)
    for hint in expected:
        assert hint in message, message
    assert named_flags(message) == flags_in(expected), message


def tiny_classifier(**overrides):
    from guided_diffusion.script_util import classifier_defaults, create_classifier

    flags = {**classifier_defaults(), **load_config(CLASSIFIER_CONFIG), "classifier_width": 32, **overrides}
    return create_classifier(**{k: v for k, v in flags.items() if k in (*classifier_defaults(), "num_classes")})


def test_a_classifier_checkpoint_given_as_the_model_says_so():
    message = mismatch(config_model(FASHION_CONFIG), tiny_classifier().state_dict())
    assert "has no output blocks" in message and "--classifier_path" in message, message
    assert named_flags(message) == {"--classifier_path"}, message
    message = mismatch(tiny_classifier(), tiny_adm()[0].state_dict())
    assert "is a diffusion U-Net" in message and "--model_path" in message, message
    assert named_flags(message) == {"--model_path"}, message


def test_classifier_mismatch_names_the_classifier_flags():
    message = mismatch(tiny_classifier(), tiny_classifier(classifier_width=64,
                                                          classifier_use_scale_shift_norm=False).state_dict())
    assert "--classifier_width 64" in message and "--classifier_use_scale_shift_norm False" in message, message
    assert named_flags(message) == {"--classifier_width", "--classifier_use_scale_shift_norm"}, message

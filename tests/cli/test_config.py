"""YAML configs and flags: precedence, conversion, errors, and the Table 1 / DDIM-25 config files."""

import argparse
import importlib
from pathlib import Path

import pytest
import torch

from guided_diffusion import guidance as guidance_lib
from guided_diffusion.cli.flags import Flag, FlagGroup, create_parser, parse
from guided_diffusion.cli.yaml_config import load_yaml, parse_args
from guided_diffusion.guidance import describe, guidance_from_flags
from guided_diffusion.guidance.base import parse_interval
from guided_diffusion.sampling.run import create_sampler_parser
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
def sampler_parser():
    return create_sampler_parser(None)


_SMALL_DEFAULTS = dict(steps="", use_fp16=False, scale=0.0, size=64, layers=["a", "b"], path=None)
SMALL_FLAGS = FlagGroup.from_defaults("", _SMALL_DEFAULTS, {name: f"the {name}" for name in _SMALL_DEFAULTS})


def small_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    SMALL_FLAGS.add_to(parser)
    return parser


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_precedence_defaults_then_yaml_then_command_line(tmp_path):
    config = write(tmp_path, "steps: 250\nuse_fp16: true\nscale: 3\nsize: 128\n")
    args = parse_args(small_parser(), ["--config", config, "--size", "256"])
    assert (args.steps, args.use_fp16, args.scale, args.size) == ("250", True, 3.0, 256)
    assert args.layers == ["a", "b"] and args.path is None
    assert parse_args(small_parser(), []).steps == ""
    # the command line wins wherever the flag appears, even before --config
    assert parse_args(small_parser(), ["--use_fp16", "False", "--config", config]).use_fp16 is False



@pytest.mark.parametrize("repeatable", [False, True])
def test_several_config_files_apply_in_order_and_the_command_line_wins(tmp_path, capsys, repeatable):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("steps: 100\nscale: 1\nsize: 32\nlayers: [p, q]\n")
    second.write_text("scale: 2\nsize: 48\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", **(dict(action="append", default=[]) if repeatable else {}))
    SMALL_FLAGS.add_to(parser)
    args = parse_args(parser, ["--config", str(first), "--size", "256", "--config", str(second)])
    assert (args.steps, args.scale, args.size, args.layers) == ("100", 2.0, 256, ["p", "q"])
    # the order of the files decides, not their contents
    args = parse_args(small_parser(), ["--config", str(second), "--config", str(first)])
    assert (args.scale, args.size) == (1.0, 32)
    # a bad key in a later file is still an error naming that file
    bad = tmp_path / "bad.yaml"
    bad.write_text("szie: 1\n")
    with pytest.raises(SystemExit):
        parse_args(small_parser(), ["--config", str(first), "--config", str(bad)])
    assert f"config file {bad}: 'szie' is not a flag of this script (did you mean size?)" in capsys.readouterr().err

def test_yaml_lists_and_strings_for_multi_value_flags(tmp_path):
    assert parse_args(small_parser(), ["--config", write(tmp_path, "layers: [x, y, z]\n")]).layers == ["x", "y", "z"]
    assert parse_args(small_parser(), ["--config", write(tmp_path, "layers: x y\n")]).layers == ["x", "y"]
    assert parse_args(small_parser(), ["--layers", "q"]).layers == ["q"]


def test_yaml_list_for_a_comma_separated_flag(tmp_path):
    args = parse_args(sampler_parser(), ["--config", write(tmp_path, "attention_resolutions: [32, 16, 8]\n")])
    assert args.attention_resolutions == "32,16,8"


@pytest.mark.parametrize("text, message", [
    ("stpes: 250\n", "'stpes' is not a flag of this script (did you mean steps?)"),
    ("size: big\n", "bad value 'big' for size"),
    ("use_fp16: maybe\n", "bad value 'maybe' for use_fp16"),
    ("size: [1, 2]\n", "bad value [1, 2] for size"),
    ("- a\n- b\n", "must hold a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, capsys, text, message):
    with pytest.raises(SystemExit):
        parse_args(small_parser(), ["--config", write(tmp_path, text)])
    assert message in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(ValueError, match="cannot read config file"):
        load_yaml(str(tmp_path / "nope.yaml"))
    with pytest.raises(SystemExit):
        parse_args(small_parser(), ["--config", str(tmp_path / "nope.yaml")])
    assert "cannot read config file" in capsys.readouterr().err


def test_release_flags_parse_verbatim():
    model_flags = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
                   "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                   "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True")
    sample_flags = "--batch_size 4 --num_samples 100 --timestep_respacing 250"
    ddim_flags = "--use_ddim True --timestep_respacing ddim25 --clip_denoised True"
    args = parse_args(sampler_parser(), (model_flags + " " + sample_flags + " " + ddim_flags).split()
                      + ["--model_path", "m.pt", "--classifier_scale", "10.0", "--classifier_path", "c.pt"])
    assert args.use_fp16 is True and args.class_cond is False and args.num_head_channels == 64
    assert args.timestep_respacing == "ddim25" and args.use_ddim is True and args.classifier_scale == 10.0
    assert args.pag_scale == 0.0 and args.sag_scale == 0.0  # unguided unless asked


def test_guidance_flags_to_objects():
    args = parse_args(sampler_parser(), ["--pag_scale", "3", "--pag_layers", "input_blocks.14.1,input_blocks.16.1",
                                           "middle_block.1", "--pag_interval", "100,999", "--pag_schedule", "linear",
                                           "--sag_scale", "0.5", "--sag_layer", "output_blocks.2.1"])
    pag, sag = guidance_from_flags(args)
    assert pag.layers == ["input_blocks.14.1", "input_blocks.16.1", "middle_block.1"]
    assert pag.interval == (100, 999) and pag.schedule == "linear" and pag.scale == 3.0
    assert sag.layer == "output_blocks.2.1" and sag.blur_sigma == 9.0 and sag.map_heads == "official"
    assert describe([pag])["pag_interval"] == [100, 999]
    assert guidance_from_flags(parse_args(sampler_parser(), [])) == []
    with pytest.raises(ValueError, match="schedule"):
        guidance_from_flags(parse_args(sampler_parser(), ["--sag_scale", "1", "--sag_schedule", "square"]))
    assert parse_interval("", "x") is None
    with pytest.raises(ValueError, match="--pag_interval must be 'lo,hi'"):
        parse_interval("1,2,3", "pag_interval")


# ----------------------------------------------------------------------------------------------------
# The shipped configs


ADM256 = dict(attention_resolutions="32,16,8", diffusion_steps=1000, image_size=256, learn_sigma=True,
              noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2, resblock_updown=True,
              use_fp16=True, use_scale_shift_norm=True, num_samples=50000)
ROWS = [(group, kind, guide) for group in ("table1", "table1/ddim25") for kind in ("uncond", "cond")
        for guide in ("unguided", "sag", "pag")]


@pytest.fixture(scope="module")
def adm256_blocks():
    """The attention blocks of the ADM-256 U-Net, built without allocating its weights."""
    blocks = {}
    for cond in (False, True):
        flags = dict(model_and_diffusion_defaults(), **{k: v for k, v in ADM256.items() if k != "num_samples"},
                     class_cond=cond)
        with torch.device("meta"):
            model, _ = create_model_and_diffusion(**flags)
        blocks[cond] = model
    return blocks


def test_every_config_file_is_a_row():
    found = sorted(p.relative_to(CONFIGS).as_posix() for g in ("table1", "table1/ddim25")
                   for p in (CONFIGS / g).glob("adm256_*"))
    assert found == sorted(f"{g}/adm256_{k}_{s}.yaml" for g, k, s in ROWS)


def test_adm256_model_flags_stand_in_one_file():
    """Composed, not copied: the architecture is written once and every row includes it."""
    holders = [p for p in CONFIGS.rglob("*.yaml") if "num_head_channels: 64" in p.read_text()]
    assert [p.relative_to(CONFIGS).as_posix() for p in holders] == ["adm256/model.yaml"]


@pytest.mark.parametrize("group, kind, guide", ROWS)
def test_config_rows_have_the_official_settings(adm256_blocks, group, kind, guide):
    args = parse_args(sampler_parser(), ["--config", str(CONFIGS / group / f"adm256_{kind}_{guide}.yaml")])
    for key, value in ADM256.items():
        assert getattr(args, key) == value, key
    assert args.class_cond is (kind == "cond")
    checkpoint = "256x256_diffusion.pt" if kind == "cond" else "256x256_diffusion_uncond.pt"
    assert args.model_path == f"models/{checkpoint}"
    if group == "table1":  # DDPM-250; the ddim25 rows include these and swap the sampler
        assert (args.timestep_respacing, args.use_ddim) == ("250", False)
    else:
        assert (args.timestep_respacing, args.use_ddim, args.eta) == ("ddim25", True, 0.0)
    assert args.output_dir == f"samples/{group.split('/')[-1]}/adm256_{kind}_{guide}"
    assert not args.classifier_path
    items = guidance_from_flags(args)
    guidance_lib.validate(items, adm256_blocks[args.class_cond])  # the layer names exist in ADM-256
    if guide == "unguided":
        assert items == []
    elif guide == "pag":
        (pag,) = items
        assert pag.scale == 3.0 and pag.interval is None and pag.schedule == "constant"
        assert pag.layers == list(guidance_lib.OFFICIAL_PAG_LAYERS_256)
        assert pag.layers == ["input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1"]
    else:
        (sag,) = items
        assert sag.scale == (0.2 if kind == "cond" else 0.8)
        assert (sag.blur_sigma, sag.layer, sag.map_heads, sag.interval) == (9.0, "output_blocks.2.1", "official", None)


# --------------------------------------------------------------------------------------------------
# Composed configs: `include:`


def test_include_applies_first_and_the_file_wins(tmp_path):
    from guided_diffusion.cli.yaml_config import load_config

    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.yaml").write_text("image_size: 64\nnum_channels: 128\n")
    (tmp_path / "sampler.yaml").write_text("timestep_respacing: ddim25\nnum_channels: 96\n")
    (tmp_path / "row.yaml").write_text("include: [sub/model.yaml, sampler.yaml]\nimage_size: 32\n")
    assert load_config(tmp_path / "row.yaml") == {"image_size": 32, "num_channels": 96, "timestep_respacing": "ddim25"}


def test_include_cycle_is_refused(tmp_path):
    from guided_diffusion.cli.yaml_config import load_config

    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ValueError, match="include each other"):
        load_config(tmp_path / "a.yaml")


def test_unknown_key_names_the_included_file(tmp_path, capsys):
    (tmp_path / "model.yaml").write_text("num_chanels: 64\n")
    (tmp_path / "row.yaml").write_text("include: model.yaml\n")
    with pytest.raises(SystemExit):
        parse_args(sampler_parser(), ["--config", str(tmp_path / "row.yaml")])
    assert "model.yaml: 'num_chanels' is not a flag" in capsys.readouterr().err


def test_flag_groups_parse_check_and_report_their_values(tmp_path):
    from guided_diffusion.cli.flags import Flag, at_least, check_flags, create_parser, finite, parse

    group = FlagGroup("g", [Flag("count", 1, "how many", at_least(1)), Flag("scale", 0.0, "s", finite),
                            Flag("name", None, "optional", type=str), Flag("fast", False, "go fast")])
    parser = create_parser("test", [group])
    (tmp_path / "a.yaml").write_text("count: 3\nfast: yes\n")
    (tmp_path / "b.yaml").write_text("scale: 2\n")
    args = parse(parser, ["--config", str(tmp_path / "a.yaml"), "--config", str(tmp_path / "b.yaml")])
    assert group.values(args) == {"count": 3, "scale": 2.0, "name": None, "fast": True}
    assert group.values(args, exclude=("name",)) == {"count": 3, "scale": 2.0, "fast": True}
    check_flags(args, [group])  # no problems
    bad = parse(parser, ["--count", "0", "--scale", "nan"])
    with pytest.raises(ValueError, match=r"^--count must be at least 1; --scale must be a finite number"):
        check_flags(bad, [group])
    stricter = group.replace(group["fast"].but(check=lambda flag, value, args: f"{flag} is off" if not value else None))
    fresh = create_parser("test", [group])  # parse() leaves a --config file's values as the parser's defaults
    assert stricter.names == group.names and stricter.problems(parse(fresh, [])) == ["--fast is off"]


def test_a_switch_is_given_bare_and_takes_yaml_booleans(tmp_path, capsys):
    group = FlagGroup("g", [Flag("dry_run", False, "run nothing", switch=True), Flag("count", 1, "how many")])
    parser = create_parser("test", [group])
    assert parse(parser, []).dry_run is False
    assert parse(parser, ["--dry_run", "--count", "2"]).dry_run is True
    assert parse(create_parser("test", [group]), ["--config", write(tmp_path, "dry_run: true\n")]).dry_run is True
    with pytest.raises(SystemExit):
        parse(create_parser("test", [group]), ["--config", write(tmp_path, "dry_run: maybe\n")])
    assert "bad value 'maybe' for dry_run: expected true or false" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--on: a switch is off by default"):
        create_parser("test", [FlagGroup("g", [Flag("on", True, "always", switch=True)])])


# (module, how many options its parser has at least: the scan sees its flags)
SCRIPTS_WITH_FLAGS = [("scripts.image_sample", 10), ("scripts.image_train", 10), ("scripts.guidance_maps", 10),
                      ("scripts.inverse_sample", 10), ("scripts.layer_probe", 10), ("scripts.sweep", 3),
                      ("scripts.train_digits_features", 7), ("scripts.train_fashion_features", 8)]


@pytest.mark.parametrize("module, count", SCRIPTS_WITH_FLAGS)
def test_every_flag_has_a_help_text(module, count):
    with pytest.raises(ValueError, match="without a help text: size"):
        FlagGroup.from_defaults("", {"size": 1}, {})
    parser = importlib.import_module(module).create_argparser()
    assert len(parser._actions) > count
    assert [a.dest for a in parser._actions if not a.help or a.help == "release flag"] == []


def test_classifier_guidance_method_file_composes_with_the_conditional_model():
    from guided_diffusion.guidance import ClassifierGuidance, method_from_flags

    args = parse_args(sampler_parser(), ["--config", str(CONFIGS / "adm256" / "cond.yaml"),
                                         "--config", str(CONFIGS / "methods" / "adm256_cg.yaml")])
    assert args.class_cond is True and args.classifier_path == "models/256x256_classifier.pt"
    assert (args.classifier_width, args.classifier_depth, args.classifier_pool) == (128, 2, "attention")
    method = method_from_flags(ClassifierGuidance, args)
    assert (method.scale, method.interval, method.schedule) == (1.0, None, "constant")


@pytest.mark.parametrize("name, expected", [
    ("seg", {"SmoothedEnergyGuidance"}), ("cfg", {"ClassifierFreeGuidance"}),
    ("cfg_pag", {"ClassifierFreeGuidance", "PerturbedAttentionGuidance"}), ("apg_pag", {"AdaptiveProjectedGuidance"}),
    ("apg_cfg", {"AdaptiveProjectedGuidance"}), ("pag", {"PerturbedAttentionGuidance"}),
    ("sag", {"SelfAttentionGuidance"})])
def test_testbed_method_files_give_their_methods(name, expected):
    args = parse_args(sampler_parser(), ["--config", str(CONFIGS / "fashion32" / "uncond.yaml"),
                                         "--config", str(CONFIGS / "fashion32" / "methods" / f"{name}.yaml")])
    methods = guidance_from_flags(args)
    assert {type(m).__name__ for m in methods} == expected
    if name == "apg_pag":  # APG reshapes PAG's tuned difference; PAG itself is off
        (apg,) = methods
        assert apg.inner.layers == load_yaml(CONFIGS / "fashion32" / "methods" / "pag.yaml")["pag_layers"]


@pytest.mark.parametrize("name, width", [("auto", 64), ("auto_small", 32)])
def test_autoguidance_method_files_load_their_shipped_weak_models(name, width):
    from guided_diffusion.guidance import Autoguidance, method_from_flags
    from guided_diffusion.sampling.images import load_weak_model

    args = parse_args(sampler_parser(), ["--config", str(CONFIGS / "fashion32" / "uncond.yaml"),
                                         "--config", str(CONFIGS / "fashion32" / "methods" / f"{name}.yaml")])
    weak = load_weak_model(args, "cpu")
    method = method_from_flags(Autoguidance, args, weak_model=weak)
    tuned = load_yaml(CONFIGS / "fashion32" / "methods" / f"{name}.yaml")["auto_scale"]
    assert method.scale == tuned > 0 and weak.num_classes is None and weak.image_size == 32
    assert weak.model_channels == width  # the small model's own width, from its --auto_model_config


@pytest.mark.parametrize("name, expected", [("adm256_seg", "SmoothedEnergyGuidance"),
                                            ("adm256_apg_pag", "AdaptiveProjectedGuidance")])
def test_adm256_successor_method_files_give_their_methods_on_the_released_blocks(name, expected, adm256_blocks):
    args = parse_args(sampler_parser(), ["--config", str(CONFIGS / "adm256" / "uncond.yaml"),
                                         "--config", str(CONFIGS / "methods" / f"{name}.yaml")])
    (method,) = guidance_from_flags(args)
    assert type(method).__name__ == expected
    assert set(method.layer_names()) <= set(adm256_blocks[False].attention_blocks())  # the released model's blocks
    if expected == "AdaptiveProjectedGuidance":
        assert method.inner.layer_names() == load_yaml(CONFIGS / "methods" / "adm256_pag.yaml")["pag_layers"]

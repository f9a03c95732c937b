"""The testbed's comparison of PAG with its successors: every row on the table's seeds with its sampler, paired
with unguided and PAG, each at a setting that its tuning sweep tried on the tuning seeds."""

import pytest
import yaml

from guided_diffusion.cli.yaml_config import parse_args
from guided_diffusion.experiments.sweep import baseline_point, expand_points, load_spec, point_config
from guided_diffusion.guidance import Autoguidance, describe, guidance_from_flags, method_from_flags
from guided_diffusion.sampling.run import create_sampler_parser

from programs import REPO

SWEEPS = REPO / "configs" / "sweeps" / "fashion32"
SAMPLERS = {"": (True, "ddim25"), "_ddpm100": (False, "100")}  # spec suffix: (use_ddim, timestep_respacing)
TABLE_SEEDS = set(range(2000))


def _points(name):
    spec = load_spec(SWEEPS / f"{name}.yaml")
    return spec, [(point, point_config(spec, point)) for point in expand_points(spec)]


def _guidance(config, tmp_path):
    """What a point's guidance is, as the sampler builds it: the settings of every method its flags turn on."""
    path = tmp_path / "point.yaml"
    path.write_text(yaml.safe_dump(config))
    args = parse_args(create_sampler_parser(None), ["--config", str(path)])
    settings = describe(guidance_from_flags(args))
    if args.auto_scale:
        settings.update(method_from_flags(Autoguidance, args).flag_settings())
    return settings


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("model", ["uncond", "cond"])
def test_rows_pair_every_method_with_unguided_and_pag_on_the_table_seeds(model, sampler, tmp_path):
    spec, points = _points(f"successors_{model}{sampler}")
    baseline = point_config(spec, baseline_point(spec))
    assert _guidance(baseline, tmp_path) == {}
    assert spec["also_compare_with"] == ["PAG"]
    for point, config in points:
        label = point["label"]
        assert (config["seed"], config["num_samples"]) == (0, 2000), label
        assert (config["use_ddim"], config["timestep_respacing"]) == SAMPLERS[sampler], label
        for key in ("model_path", "class_cond", "precision", "eta"):
            assert config[key] == baseline[key], (label, key)
        if label != "unguided":
            assert _guidance(config, tmp_path), label  # a guided row
    pag = next(config for point, config in points if point["label"] == "PAG")
    assert _guidance(pag, tmp_path)["pag_scale"] > 0


@pytest.mark.parametrize("model", ["uncond", "cond"])
def test_both_samplers_compare_the_same_methods(model):
    labels = [{point["label"] for point, _ in _points(f"successors_{model}{sampler}")[1]} for sampler in SAMPLERS]
    assert labels[0] == labels[1] and len(labels[0]) >= 5


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_row_is_at_a_setting_its_tuning_tried_on_disjoint_seeds(sampler, tmp_path):
    tried = []
    for model in ("uncond", "cond"):  # PAG's conditional row takes the unconditional model's tuned scale
        for point, config in _points(f"tune_successors_{model}{sampler}")[1]:
            seeds = range(config["seed"], config["seed"] + config["num_samples"])
            assert not TABLE_SEEDS & set(seeds), point["label"]
            assert (config["use_ddim"], config["timestep_respacing"]) == SAMPLERS[sampler], point["label"]
            tried.append(_guidance(config, tmp_path))
    for model in ("uncond", "cond"):
        for point, config in _points(f"successors_{model}{sampler}")[1]:
            assert _guidance(config, tmp_path) in tried, (model, point["label"])


def test_every_sampler_specific_method_file_is_a_row_of_that_samplers_table():
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "configs/fashion32/methods/ddpm100").glob("*.yaml")}
    used = {path for model in ("uncond", "cond") for point, _ in _points(f"successors_{model}_ddpm100")[1]
            for path in point["config"] if "/methods/" in path}
    assert used == files

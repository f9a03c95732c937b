"""The Fashion-MNIST testbed's Table 1: its row configs, shipped checkpoints and reference."""


import numpy as np
import pytest
import torch

from evaluations.npz import inspect_npz
from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.experiments.sweep import baseline_point, expand_points, load_spec, point_config
from guided_diffusion.script_util import model_and_diffusion_defaults

from programs import REPO, assert_ok, run_script

TABLE = REPO / "configs" / "fashion32" / "table1"
ROWS = sorted(p for p in TABLE.rglob("*.yaml") if p.name != "run.yaml")
MODEL_KEYS = set(model_and_diffusion_defaults()) - {"class_cond", "num_classes", "null_label", "timestep_respacing"}


def row(name):
    return load_config(TABLE / f"{name}.yaml")


def test_every_row_of_the_table_has_its_file():
    names = {p.relative_to(TABLE).with_suffix("").as_posix() for p in ROWS}
    assert names == {"uncond_unguided", "uncond_sag", "uncond_pag", "cond_unguided", "cond_sag", "cond_pag",
                     "cond_cg", "cond_cg_pag", "ddpm100/uncond_unguided", "ddpm100/uncond_pag"}


def test_rows_differ_only_in_model_and_method():
    rows = {p.relative_to(TABLE).with_suffix("").as_posix(): load_config(p) for p in ROWS}
    for name, values in rows.items():
        assert values["seed"] == 0, name  # the same seeds in every row
        ddpm = name.startswith("ddpm100/")
        assert values["num_samples"] == 2000, name
        assert (values["use_ddim"], values["timestep_respacing"]) == ((False, "100") if ddpm else (True, "ddim25"))
        assert values["class_cond"] == name.split("/")[-1].startswith("cond_"), name
        assert (values.get("pag_scale", 0) > 0) == name.endswith("pag"), name
        assert (values.get("sag_scale", 0) > 0) == name.endswith("sag"), name
        assert bool(values.get("classifier_path")) == ("_cg" in name), name
        assert {k: values[k] for k in MODEL_KEYS} == {k: rows["uncond_unguided"][k] for k in MODEL_KEYS}, name
    assert rows["cond_pag"]["pag_layers"] == rows["uncond_pag"]["pag_layers"] == rows["cond_cg_pag"]["pag_layers"] \
        == rows["ddpm100/uncond_pag"]["pag_layers"]
    assert rows["cond_unguided"]["num_classes"] == 10


def _sweep(name):
    """A testbed sweep spec and its points' overrides with the flag values each point samples with."""
    spec = load_spec(REPO / "configs" / "sweeps" / "fashion32" / f"{name}.yaml")
    return spec, [(point, point_config(spec, point)) for point in expand_points(spec)]


def test_table_sweeps_run_every_row_against_its_unguided_row():
    covered = set()
    for name in ("table1_uncond", "table1_cond", "table1_ddpm100"):
        spec, points = _sweep(name)
        covered |= {point["config"] for point, _ in points}
        baseline = point_config(spec, baseline_point(spec))
        assert not baseline.get("pag_scale") and not baseline.get("sag_scale"), name
        assert not baseline.get("classifier_path"), name
        for _, config in points:  # compared on the same seeds and model as their baseline
            assert (config["seed"], config["num_samples"], config["model_path"]) == \
                (baseline["seed"], baseline["num_samples"], baseline["model_path"]), name
    assert covered == {p.relative_to(REPO).as_posix() for p in ROWS}


@pytest.mark.parametrize("method", ["pag", "sag"])
def test_tuning_seeds_are_disjoint_from_the_table_seeds(method):
    configs = [config for _, config in _sweep(f"tune_{method}")[1]]
    table = row(f"uncond_{method}")
    table_seeds = range(table["seed"], table["seed"] + table["num_samples"])
    for config in configs:
        tuning_seeds = range(config["seed"], config["seed"] + config["num_samples"])
        assert not set(tuning_seeds) & set(table_seeds)
        assert config["model_path"] == table["model_path"]
        assert config["timestep_respacing"] == table["timestep_respacing"]
        assert config["precision"] == table["precision"]  # tuned as the table samples
    scales = {config[f"{method}_scale"] for config in configs}
    assert 0.0 in scales and len(scales) > 2  # a baseline and several strengths, on the same seeds


@pytest.mark.parametrize("name", ["uncond", "cond", "classifier"])
def test_shipped_checkpoints_are_small_float16_state_dicts(name):
    path = REPO / "checkpoints" / f"fashion32_{name}_ema.pt"
    assert path.stat().st_size <= 12 * 2**20
    state = torch.load(path, weights_only=True)
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert all(torch.isfinite(v).all() for v in state.values())


def test_shipped_reference_is_the_test_split():
    info = inspect_npz(REPO / "checkpoints" / "fashion32_test_ref.npz")
    assert info.image_shape == (10000, 32, 32, 3)
    assert (REPO / "checkpoints" / "fashion32_test_ref.npz").stat().st_size <= 10 * 2**20
    labels = np.load(REPO / "checkpoints" / "fashion32_test_ref.npz")["arr_1"]
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.e2e
@pytest.mark.parametrize("config", ROWS, ids=lambda p: p.relative_to(TABLE).with_suffix("").as_posix())
def test_each_row_samples_two_images(config, tmp_path):
    steps = "2" if "ddpm100" in config.parts else "ddim2"
    assert_ok(run_script("pag-image-sample", "--config", str(config), "--num_samples", "2", "--batch_size", "2",
                         "--timestep_respacing", steps, "--output_dir", str(tmp_path), "--progress", "False"))
    with np.load(tmp_path / "samples_2x32x32x3.npz") as batch:
        assert batch["arr_0"].shape == (2, 32, 32, 3)
        if config.stem.startswith("cond_"):
            assert set(batch["arr_1"].tolist()) <= set(range(10))

"""Access to the golden fixtures in ../shared/golden (made by the reference implementations)."""

import os
from pathlib import Path

import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

GOLDEN_DIR = Path(os.environ.get("PAG_GOLDEN_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden"))


def load_fixture(name):
    path = GOLDEN_DIR / name
    if not path.exists():
        message = f"golden fixture {path} is missing: put ../shared/golden beside the repo or set PAG_GOLDEN_DIR"
        if os.environ.get("CI"):  # CI has the fixtures: a missing one is a broken set-up, not a skip
            pytest.fail(message)
        pytest.skip(message)
    fx = torch.load(path, weights_only=True)
    for key in ("state_dict", "classifier_state_dict"):
        if isinstance(fx.get(key), str):
            fx[key] = torch.load(GOLDEN_DIR / fx[key], weights_only=True)[key]
    return fx


def model_flags(fx, **overrides):
    # the fixtures predate --num_classes: their class-conditional models have the release's 1000 classes
    flags = {k: fx["config"].get(k, default) for k, default in model_and_diffusion_defaults().items()}
    flags.update(overrides)
    return flags


def build_model_and_diffusion(fx, **overrides):
    model, diffusion = create_model_and_diffusion(**model_flags(fx, **overrides))
    model.load_state_dict(fx["state_dict"], strict=True)
    model.eval()
    return model, diffusion


def model_kwargs(fx, case_inputs=None):
    if not fx["config"].get("class_cond"):
        return {}
    return {"y": fx["inputs"]["y"]}


def case_ids(fx):
    return [case["name"] for case in fx["cases"]]

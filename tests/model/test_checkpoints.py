"""Checkpoints load strictly, a mismatch names the flag, and a file that is not a checkpoint says what it is
not (never advising unsafe loading)."""

import pickle

import pytest
import torch

from guided_diffusion.model.checkpoints import (
    CheckpointMismatchError,
    NotACheckpointError,
    load_checkpoint,
    read_state_dict,
    write_weights,
)
from guided_diffusion.script_util import create_model_and_diffusion

from conftest import TINY_ADM, tiny_adm
from golden import load_fixture, model_flags
from programs import cli_flags, run_script

TINY = cli_flags(TINY_ADM)


def write(path, kind):
    if kind == "text":
        path.write_text("<html>404 Not Found</html>\n")  # what a failed download often leaves
    elif kind == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:2000])  # a download cut short
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled_list":
        torch.save([torch.zeros(2)], path)
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    elif kind == "whole_module":
        torch.save(torch.nn.Linear(2, 2), path)  # torch.save(model) instead of model.state_dict()
    elif kind == "dict_of_numbers":
        torch.save({"w": torch.zeros(2), "step": 3}, path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("text", "is not a torch checkpoint (torch.save writes a zip archive); it starts with b'<html>404"),
    ("truncated", "is a truncated or damaged zip archive (2,000 bytes"),
    ("empty", "is empty (0 bytes), not a checkpoint"),
    ("pickled_list", "is a torch file holding a list, not a state_dict"),
    ("plain_pickle", "is a pickle file, not a torch checkpoint"),
    ("whole_module", "holds pickled Python objects (torch.nn.modules.linear.Linear), not a state_dict"),
    ("dict_of_numbers", "holds a dict that is not a state_dict: 'step' is of type int"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is_not(tmp_path, kind, message):
    path = write(tmp_path / "model.pt", kind)
    with pytest.raises(NotACheckpointError) as error:
        read_state_dict(str(path))
    assert message in str(error.value)
    assert "weights_only" not in str(error.value) and "trust" not in str(error.value)


@pytest.mark.e2e
def test_sampling_script_reports_a_file_that_is_not_a_checkpoint(tmp_path):
    path = write(tmp_path / "model.pt", "text")
    result = run_script("pag-image-sample", "--model_path", path, *TINY, "--num_samples", "2",
                        "--output_dir", tmp_path / "out")
    assert result.returncode != 0
    assert "is not a torch checkpoint" in result.stderr
    assert "weights_only" not in result.stderr and "unexpected error" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.golden
@pytest.mark.parametrize("overrides,flag", [
    (dict(class_cond=True), "--class_cond False"),
    (dict(learn_sigma=False), "--learn_sigma True"),
    (dict(num_channels=64), "--num_channels 32"),
    (dict(attention_resolutions="16,8"), "--attention_resolutions"),
    (dict(use_scale_shift_norm=False), "--use_scale_shift_norm True"),
    (dict(resblock_updown=False), "--resblock_updown True"),
    (dict(num_res_blocks=1), "--num_res_blocks"),
])
def test_checkpoint_mismatch_names_the_flag(overrides, flag):
    fx = load_fixture("model_adm32_uncond.pt")
    model, _ = create_model_and_diffusion(**model_flags(fx, **overrides))
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, fx["state_dict"])
    assert flag in str(err.value)
    assert len(str(err.value)) < 2000  # a diagnosis, not a dump of every key


@pytest.mark.golden
def test_checkpoint_loads_strictly_from_file(tmp_path):
    fx = load_fixture("model_newattn32_cond.pt")
    path = tmp_path / "model.pt"
    torch.save(fx["state_dict"], path)
    model, _ = create_model_and_diffusion(**model_flags(fx))
    load_checkpoint(model, str(path))
    assert torch.equal(model.state_dict()["label_emb.weight"], fx["state_dict"]["label_emb.weight"])
    torch.save({**fx["state_dict"], "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_checkpoint(model, str(path))
    with pytest.raises(FileNotFoundError, match="download"):
        load_checkpoint(model, str(tmp_path / "missing.pt"))


def test_weights_written_in_float16_load_back_as_the_rounded_model(tmp_path):
    model, _ = tiny_adm(weights_seed=0)  # random weights everywhere, so rounding shows in every tensor
    torch.save(model.state_dict(), tmp_path / "full.pt")
    count = write_weights(str(tmp_path / "full.pt"), str(tmp_path / "half.pt"))
    assert count == sum(v.numel() for v in model.state_dict().values())
    half = torch.load(tmp_path / "half.pt", weights_only=True)
    assert {v.dtype for v in half.values()} == {torch.float16}
    restored, _ = tiny_adm()
    load_checkpoint(restored, str(tmp_path / "half.pt"))
    for name, value in restored.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[name].half().float()), name

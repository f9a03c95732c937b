"""A file that is not a checkpoint: the error says what the file is not, and never advises unsafe loading."""

import pickle

import pytest
import torch

from programs import run_script
from guided_diffusion.checkpoints import NotACheckpointError, read_state_dict

TINY = ["--image_size", "16", "--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
        "--attention_resolutions", "8", "--num_head_channels", "16"]


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

"""Training faults, as a user meets them through `pag-image-train`: a missing or unusable dataset is one line
before the model is built, errors are in the run's log.txt as well as on the console, and the temporary file
of a checkpoint write that was killed midway is removed when the run resumes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.runtime.files import is_temporary

from conftest import TINY_ADM
from programs import MPI_HINT, REPO, child_env, cli_flags, find_program, require_module, run_script

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

# The tiny ADM at 8x8 on the digits: a few steps take a second.
FLAGS = cli_flags({**TINY_ADM, "image_size": 8, "attention_resolutions": "4", "diffusion_steps": 20,
                   "noise_schedule": "cosine", "batch_size": 4, "log_interval": 1, "save_interval": 100,
                   "progress": False})
MODEL_BUILT = "parameters"  # the log line "model: 1,234 parameters" that follows building the network


def train(run_dir, *args, env=None):
    return run_script("pag-image-train", *FLAGS, "--run_dir", run_dir, *args, env=env, timeout=240)


def log_txt(run_dir):
    with open(os.path.join(run_dir, "log.txt")) as f:
        return f.read()


def assert_one_line_error(result, run_dir, message):
    """Exit status 1, no traceback, the message on one console line and in the run's log.txt."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if " error: " in line or "Error" in line]
    assert len(errors) == 1 and message in errors[0] and errors[0].split(" ", 1)[1].startswith("error: "), \
        result.stderr[-3000:]
    assert [line for line in log_txt(run_dir).splitlines() if " ERROR " in line and message in line]


# --------------------------------------------------------------------------------------------------
# The data is opened and checked before the model is built


def _write_npz(path, count, labels=True):
    images = np.zeros((count, 8, 8, 3), dtype=np.uint8)
    np.savez(path, **({"arr_0": images, "arr_1": np.zeros(count, dtype=np.int64)} if labels else {"arr_0": images}))
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["fashion_not_installed", "no_folder", "no_npz", "empty_folder",
                                  "npz_without_labels", "fewer_images_than_a_batch"])
def test_bad_training_data_is_one_line_before_the_model_is_built(tmp_path, case):
    run_dir, env, extra = str(tmp_path / "run"), None, []
    if case == "fashion_not_installed":  # Fashion-MNIST's idx files are not where the loader looks
        (tmp_path / "empty").mkdir()
        env = child_env(FASHION_MNIST_DIR=str(tmp_path / "empty"))
        data, message = "fashion:train", "Fashion-MNIST file train-images-idx3-ubyte(.gz) not found in"
        hints = ["apt-get install dataset-fashion-mnist", "FASHION_MNIST_DIR"]
    elif case == "no_folder":
        data, message, hints = str(tmp_path / "no_such_folder"), "does not exist", ["an image folder"]
    elif case == "no_npz":
        data, message, hints = str(tmp_path / "missing.npz"), "does not exist", ["an image folder"]
    elif case == "empty_folder":
        (tmp_path / "images").mkdir()
        data, message, hints = str(tmp_path / "images"), "no images (jpg, jpeg, png, gif, webp) found under", []
    elif case == "npz_without_labels":
        data = _write_npz(tmp_path / "unlabelled.npz", 8, labels=False)
        data, message, hints, extra = str(data), "has no labels (arr_1) but --class_cond is True", [], [
            "--class_cond", "True", "--num_classes", "10"]
    else:
        data, message, hints = str(_write_npz(tmp_path / "three.npz", 3)), "fewer than the batch size 4", []
    result = train(run_dir, "--data_dir", data, "--max_steps", "1", *extra, env=env)
    assert_one_line_error(result, run_dir, message)
    for hint in hints:
        assert hint in result.stderr, result.stderr
    assert MODEL_BUILT not in result.stderr, result.stderr  # found before the network was built
    assert not [name for name in os.listdir(run_dir) if name.endswith(".pt")]


@pytest.mark.e2e
def test_data_that_fails_on_one_rank_stops_every_rank(tmp_path):
    """Seven images on two processes: rank 1 holds three, fewer than a batch of four. Both ranks stop with its
    message (rank 0 does not go on to wait for rank 1 in a collective)."""
    mpiexec = find_program("mpiexec", MPI_HINT)
    require_module("mpi4py", MPI_HINT)
    run_dir = str(tmp_path / "run")
    result = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.join(REPO, "scripts", "image_train.py"),
                             *FLAGS, "--run_dir", run_dir, "--data_dir", str(_write_npz(tmp_path / "seven.npz", 7)),
                             "--max_steps", "1"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=240)
    message = "rank 1 holds 3 images, fewer than the batch size 4"
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [line.split(" ", 1)[1] for line in result.stderr.splitlines() if message in line] == [
        f"error: {message}"] * 2, result.stderr[-3000:]  # once from each rank
    assert MODEL_BUILT not in result.stderr and message in log_txt(run_dir)


# --------------------------------------------------------------------------------------------------
# Errors of the setup and of the run go to log.txt


@pytest.mark.e2e
def test_checkpoint_mismatch_on_resume_is_in_the_log(tmp_path):
    """The run folder holds a checkpoint of a wider network: the resume fails with the flag to set."""
    from conftest import tiny_adm

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    wider, _ = tiny_adm(image_size=8, attention_resolutions="4", num_channels=64)
    torch.save(wider.state_dict(), run_dir / "model000002.pt")
    result = train(str(run_dir), "--data_dir", "digits", "--max_steps", "3")
    assert_one_line_error(result, str(run_dir), "does not match the model flags")
    assert "set --num_channels 64" in result.stderr and "set --num_channels 64" in log_txt(run_dir)


@pytest.mark.e2e
def test_an_error_during_the_run_is_in_the_log(tmp_path):
    """A learning rate that blows the weights up: the non-finite gradient stops the run, and log.txt says so."""
    run_dir = str(tmp_path / "run")
    result = train(run_dir, "--data_dir", "digits", "--max_steps", "10", "--lr", "1e30")
    assert_one_line_error(result, run_dir, "non-finite gradient at step")
    assert MODEL_BUILT in log_txt(run_dir)


# --------------------------------------------------------------------------------------------------
# A checkpoint write killed midway


KILLED_WHILE_SAVING = """
import os, sys
from guided_diffusion.runtime.files import atomic_write
from guided_diffusion.training import loop

def killed_midway(obj, path):
    def write(f):
        f.write(bytes(1 << 20))  # a megabyte of the checkpoint, then the process dies as under SIGKILL
        f.flush()
        os._exit(137)
    atomic_write(path, write)

loop._atomic_save = killed_midway
from scripts.image_train import main
main(sys.argv[1:])
"""


@pytest.mark.e2e
def test_resume_removes_the_temporary_file_of_a_checkpoint_write_that_was_killed(tmp_path):
    run_dir = str(tmp_path / "run")
    train(run_dir, "--data_dir", "digits", "--max_steps", "2").check_returncode()
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, *FLAGS, "--run_dir", run_dir,
                             "--data_dir", "digits", "--max_steps", "3"], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == 137, killed.stderr[-3000:]
    left = [name for name in os.listdir(run_dir) if is_temporary(name)]
    assert len(left) == 1 and left[0].startswith(".model000003.pt."), os.listdir(run_dir)
    assert os.path.getsize(os.path.join(run_dir, left[0])) == 1 << 20

    resumed = train(run_dir, "--data_dir", "digits", "--max_steps", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [name for name in os.listdir(run_dir) if is_temporary(name)], os.listdir(run_dir)
    lines = [line for line in log_txt(run_dir).splitlines() if left[0] in line]
    assert len(lines) == 1 and "removed" in lines[0] and "interrupted" in lines[0], log_txt(run_dir)
    assert "loading model from checkpoint" in resumed.stderr and "model000002.pt" in resumed.stderr
    state = torch.load(os.path.join(run_dir, "train_state000003.pt"), weights_only=True)
    assert state["step"] == 3

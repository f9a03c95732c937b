"""The feature-network trainers' flags (guided_diffusion/testbeds/feature_trainer_flags.py): bad values are
refused with one line naming the flag, before any training, through the commands users run."""

import subprocess
import sys

import pytest

from programs import REPO, child_env, run_script


def _fashion_trainer(*args):
    return subprocess.run([sys.executable, "scripts/train_fashion_features.py", *map(str, args)], cwd=REPO,
                          env=child_env(FASHION_MNIST_DIR=str(REPO / "no_such_folder")), capture_output=True,
                          text=True, timeout=300)


def _assert_one_line_error(result, message):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == message, result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "error: --epochs must be at least 1"),
    (["--lr", "0", "--weight_decay", "-1"], "error: --lr must be positive; got 0.0; --weight_decay must be at least 0"),
    (["--batch_size", "5000"], "error: --batch_size 5000 is more than the 1500 training images; use a smaller batch"),
])
def test_digits_trainer_refuses_bad_settings(tmp_path, args, message):
    result = run_script("pag-train-digits-features", *args, "--out", tmp_path / "w.pt")
    _assert_one_line_error(result, message)
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.e2e
def test_fashion_trainer_checks_its_flags_then_names_missing_data(tmp_path):
    _assert_one_line_error(_fashion_trainer("--epochs", "0"), "error: --epochs must be at least 1")
    result = _fashion_trainer("--out", tmp_path / "w.pt")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: Fashion-MNIST file train-images-idx3-ubyte(.gz) not found in {REPO / 'no_such_folder'}")

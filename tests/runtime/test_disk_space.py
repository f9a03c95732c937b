"""Free-space checks and full-disk messages (guided_diffusion/runtime/disk_space.py), and the file that a failed
write names (runtime/files.py)."""

import errno
import os
import shutil

import pytest

from guided_diffusion.runtime import disk_space
from guided_diffusion.runtime.disk_space import (
    NotEnoughSpace,
    describe_bytes,
    disk_full_message,
    is_disk_full,
    require_free_space,
)
from guided_diffusion.runtime.files import atomic_write


def test_describe_bytes_gives_a_size_to_read_and_the_exact_count():
    assert describe_bytes(999) == "999 bytes"
    assert describe_bytes(24_578, "shards 8,000") == "24.6 kB (24,578 bytes: shards 8,000)"
    assert describe_bytes(9_830_400_000) == "9.8 GB (9,830,400,000 bytes)"


def test_require_free_space_names_folder_needed_and_free_bytes(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=5000))
    assert require_free_space(tmp_path, {"npz": 3000, "grid": 2000}, "to write it") == 5000
    with pytest.raises(NotEnoughSpace) as info:
        require_free_space(tmp_path, {"npz": 3000, "grid": 2001}, "to write it")
    assert str(info.value) == (f"not enough free space in {tmp_path} to write it: it needs about 5.0 kB (5,001 bytes: "
                               "npz 3,000, grid 2,001), and 5.0 kB (5,000 bytes) are free; free some space there or "
                               "use another folder, then run the same command again: it continues where it stopped")
    assert is_disk_full(info.value) and disk_full_message(info.value) == str(info.value)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_write_to_a_full_disk_names_the_folder_in_one_line(tmp_path, monkeypatch, code):
    def full(f):
        f.write(b"x")
        raise OSError(code, os.strerror(code))  # what write() or fsync() raises: no file name

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "shard.npz", full)
    assert os.listdir(tmp_path) == []  # the temporary went
    assert os.path.dirname(info.value.filename) == str(tmp_path)
    assert is_disk_full(info.value) and not is_disk_full(OSError(errno.EACCES, "denied"))
    assert disk_full_message(info.value) == (f"the disk holding {tmp_path} is full ({os.strerror(code)}): free some "
                                             "space there, then run the same command again: it continues where it "
                                             "stopped")
    assert disk_full_message(OSError(code, "x", str(tmp_path))).startswith(f"the disk holding {tmp_path} is full")
    assert disk_space.RERUN in disk_full_message(OSError(code, "x"))

"""Atomic writes, exclusive creation and fingerprints (guided_diffusion/runtime/files.py); where messages go
(runtime/logs.py)."""

import errno
import hashlib
import logging
import os

import pytest

from guided_diffusion.runtime import logs as log_setup
from guided_diffusion.runtime.files import (
    MIB,
    atomic_write,
    atomic_write_text,
    create_exclusively,
    file_fingerprint,
    file_identity,
    file_sha256,
    is_temporary,
)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_text(path, "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    with pytest.raises(ValueError):
        atomic_write(path, lambda f: f.write(b"bad"), check=lambda tmp: _refuse(tmp))
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.bin"]  # no temporary left
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _refuse(tmp):
    assert is_temporary(os.path.basename(tmp), "a.bin") and open(tmp, "rb").read() == b"bad"
    raise ValueError("not what was expected")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_create_exclusively_creates_once(tmp_path):
    path = tmp_path / "manifest.json"
    assert create_exclusively(path, b"first")
    assert not create_exclusively(path, b"second")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["manifest.json"]


def test_fingerprints_keep_their_keys_and_values(tmp_path):
    """The keys and values that sampling manifests and activation caches already hold."""
    head, middle, tail = os.urandom(MIB), os.urandom(MIB), os.urandom(MIB)
    big, small = tmp_path / "big.npz", tmp_path / "small.npz"
    big.write_bytes(head + middle + tail)
    small.write_bytes(head + b"rest")
    assert file_identity(str(big)) == {"size": 3 * MIB, "sha256_first_mib": hashlib.sha256(head).hexdigest()}
    fingerprint = file_fingerprint(big)
    assert fingerprint == {"size": 3 * MIB, "mtime_ns": os.stat(big).st_mtime_ns,
                           "sha256_ends": hashlib.sha256(head + tail).hexdigest()}
    assert file_fingerprint(small)["sha256_ends"] == hashlib.sha256(head + b"rest").hexdigest()
    assert file_sha256(big) == hashlib.sha256(head + middle + tail).hexdigest()
    with pytest.raises(FileNotFoundError):
        file_identity(str(tmp_path / "missing.pt"))


def test_log_setup_routes_project_messages_only(tmp_path, capsys):
    path = tmp_path / "logs" / "rank0.log"
    log_setup.log_to_console(rank=0)
    log_setup.log_to_console(rank=0)  # replaces the first: no line twice
    log_setup.log_to_file(str(path))
    try:
        logging.getLogger("guided_diffusion.x").info("to both")
        logging.getLogger("scripts.y").debug("to the file only")
        logging.getLogger("elsewhere").warning("not ours")
    finally:
        log_setup.stop_logging()
    logging.getLogger("guided_diffusion.x").info("after stop_logging")
    err = capsys.readouterr().err
    assert err.count("to both") == 1 and "to the file only" not in err and "after" not in err
    text = path.read_text()
    assert "INFO to both" in text and "DEBUG to the file only" in text and "not ours" not in text


class FullDiskStream:
    """A log file's stream on a full disk: every write fails."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def test_a_log_file_on_a_full_disk_stops_with_one_warning_not_a_traceback_per_message(tmp_path, capsys):
    path = tmp_path / "logs" / "rank0.log"
    log_setup.log_to_console(rank=0)
    handler = log_setup.log_to_file(str(path))
    logger = logging.getLogger("guided_diffusion.x")
    try:
        logger.info("before")
        handler.stream = FullDiskStream()
        logger.info("while full")
        logger.info("still full")
    finally:
        log_setup.stop_logging()
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert err.count(f"cannot write the log file {path} (No space left on device)") == 1
    assert "while full" in err and "still full" in err  # the console still gets every message
    assert path.read_text().count("INFO") == 1

"""Writing files so that no reader ever sees half of one, and recognising a file without reading all of it.

Every write goes to a temporary file `.{name}.XXXXXXXX.tmp` beside its target, is fsynced, then renamed
over the target (or linked to it, for files that must be created only once). A process killed mid-write
leaves only such a temporary, which `is_temporary` recognises so that cleaners can delete it.

Fingerprints, from cheapest to strictest:

- `file_identity`: size and SHA-256 of the first MiB; independent of path and time (checkpoints named in
  a sampling manifest, sample files a sweep comparison was made from).
- `file_fingerprint`: size, modification time and SHA-256 of the first and last MiB; a rewritten file
  changes it (the batch an activation cache was computed from).
- `file_sha256`: the SHA-256 of the whole file (network weights that name a feature backend).
"""

import hashlib
import os
import tempfile

MIB = 1 << 20
TEMP_SUFFIX = ".tmp"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def is_temporary(name, target=None):
    """Whether file `name` is a temporary of this module's writes (of file `target` only, if given)."""
    prefix = f".{target}." if target is not None else "."
    return name.startswith(prefix) and name.endswith(TEMP_SUFFIX)


def _write_temporary(path, write):
    """A synced temporary file beside `path` filled by `write(binary file)`, with ordinary permissions."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; the outputs are ordinary files
    except BaseException as error:
        remove_if_present(tmp)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = tmp  # a failed write or fsync (a full disk) does not say which file it was
        raise
    return tmp


def atomic_write(path, write, check=None):
    """Call `write(binary file)` on a temporary file beside `path`, then rename it to `path`.

    `check(temporary path)`, if given, runs before the rename: raising leaves `path` as it was.
    """
    tmp = _write_temporary(path, write)
    try:
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        remove_if_present(tmp)


def atomic_write_text(path, text):
    """Replace `path` by a file holding `text` (UTF-8) in one step."""
    atomic_write(path, lambda f: f.write(text.encode()))


def create_exclusively(path, data):
    """Create `path` holding bytes `data` unless it exists; True if this call created it.

    Of several processes creating the same file at once exactly one succeeds, and readers never see a part
    of it (a hard link of a complete temporary; on filesystems without hard links, exclusive creation).
    """
    tmp = _write_temporary(path, lambda f: f.write(data))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            with open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
    finally:
        remove_if_present(tmp)


def append_line(path, line):
    """Append `line` and a newline to text file `path`, on disk before this returns."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_if_present(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def file_identity(path):
    """`{"size", "sha256_first_mib"}` of a local or blobfile path."""
    import blobfile as bf

    if not bf.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with bf.BlobFile(path, "rb") as f:
        head = f.read(MIB)
    return {"size": bf.stat(path).size, "sha256_first_mib": hashlib.sha256(head).hexdigest()}


def file_fingerprint(path):
    """`{"size", "mtime_ns", "sha256_ends"}` of a local file; cheap even for a 10 GB batch."""
    st = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(MIB))
        if st.st_size > 2 * MIB:
            f.seek(-MIB, os.SEEK_END)
        digest.update(f.read(MIB))  # the last MiB, or what follows the first in a smaller file
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256_ends": digest.hexdigest()}


def file_sha256(path):
    """Hex SHA-256 of the whole file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Free space: checking it before a long write, and saying in one line which folder a failed write filled.

    require_free_space(folder, {"shards": n, "final npz": m}, "to sample 10 images")  # NotEnoughSpace if short
    if is_disk_full(error): print(disk_full_message(error))  # an OSError of a write to a full disk (or quota)

A write that fails with a full disk names its file in `error.filename` where the writer knows it
(runtime/files.py's writes always do), so the message can name the folder to clean up.
"""

import errno
import os
import shutil

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
RERUN = "then run the same command again: it continues where it stopped"


class NotEnoughSpace(OSError):
    """A folder's filesystem has less free space than a write about to start needs."""

    def __init__(self, message, folder):
        super().__init__(errno.ENOSPC, message)
        self.message = message
        self.filename = folder

    def __str__(self):
        return self.message


def free_bytes(folder):
    """Bytes this user may still write in `folder`'s filesystem."""
    return shutil.disk_usage(folder).free


def describe_bytes(count, detail=""):
    """`9.8 GB (9,830,400,000 bytes)`, or with `detail` `9.8 GB (9,830,400,000 bytes: detail)`."""
    count = int(count)
    if count < 1000:
        return f"{count} bytes" + (f" ({detail})" if detail else "")
    size, units = count / 1000, ["kB", "MB", "GB", "TB"]
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{size:.1f} {units[0]} ({count:,} bytes" + (f": {detail}" if detail else "") + ")"


def require_free_space(folder, parts, purpose, advice=RERUN):
    """Raise NotEnoughSpace unless `folder` has room for the bytes of `parts` ({what: bytes}), naming the
    bytes needed (and what for) and the bytes free. `purpose`: what they are for ("to write the final npz")."""
    needed, free = sum(parts.values()), free_bytes(folder)
    if free < needed:
        detail = ", ".join(f"{what} {count:,}" for what, count in parts.items())
        raise NotEnoughSpace(f"not enough free space in {folder} {purpose}: it needs about "
                             f"{describe_bytes(needed, detail)}, and {describe_bytes(free)} are free; free some "
                             f"space there or use another folder, {advice}", folder)
    return free


def is_disk_full(error):
    return isinstance(error, OSError) and error.errno in DISK_FULL


def disk_full_message(error, advice=RERUN):
    """One line for a write that failed on a full disk (or quota): which folder, and what to do."""
    if isinstance(error, NotEnoughSpace):
        return error.message
    name = error.filename
    folder = os.path.dirname(os.path.abspath(name)) if name and not os.path.isdir(name) else name
    where = f"the disk holding {folder}" if folder else "the disk being written"
    return f"{where} is full ({os.strerror(error.errno)}): free some space there, {advice}"

"""pag-image-sample on a simulated small disk, for the tests where a small tmpfs cannot be mounted:

    python tests/simulated_disk.py STATE [pag-image-sample flags...]

STATE is a JSON file `{"free": bytes or null}`, read at every call: `shutil.disk_usage` reports that many free
bytes (null: the real count), and at 0 every `os.fsync` and `os.pwrite` fails with ENOSPC, as the writes to a
full disk do (every file of the sampler that is meant to last is synced before it counts).
"""

import errno
import json
import os
import shutil
import sys

_real_disk_usage, _real_fsync, _real_pwrite = shutil.disk_usage, os.fsync, os.pwrite


def _free(state):
    with open(state) as f:
        return json.load(f)["free"]


def simulate(state):
    def disk_usage(path):
        usage = _real_disk_usage(path)
        free = _free(state)
        return usage if free is None else usage._replace(free=min(int(free), usage.free))

    def failing(real):
        def call(*args):
            if _free(state) == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args)
        return call

    shutil.disk_usage = disk_usage
    os.fsync = failing(_real_fsync)
    os.pwrite = failing(_real_pwrite)


if __name__ == "__main__":
    simulate(sys.argv[1])
    from scripts.image_sample import main

    raise SystemExit(main(sys.argv[2:]))

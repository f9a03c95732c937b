"""A stand-in for a sweep's launcher (the spec's `launch:`, e.g. mpiexec) in the signal tests: it records its
pid, runs until a SIGTERM or SIGINT, then takes a second to stop, as a sampler finishing its block does, and
records which signal stopped it. The sampling command the sweep appends is ignored.

    python tests/experiments/stand_in_launcher.py FOLDER [sampling command...]
"""

import os
import signal
import sys
import time
from pathlib import Path

folder = Path(sys.argv[1])


def stop(signum, frame):
    time.sleep(1.0)  # a parent that does not wait is gone before this child is
    (folder / "stopped_by").write_text(str(signum))
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(folder / "launcher.pid").write_text(str(os.getpid()))
deadline = time.time() + 300  # never outlive a broken test by long
while time.time() < deadline:
    time.sleep(0.05)
sys.exit(3)

"""SIGTERM, SIGINT and SIGHUP as an exception in the main thread, so that a long run stops through its
`finally` blocks (claims released, scratch files removed) and its caller can say so in one line:

    with stop_on_signals():
        try:
            work()
        except Stopped as stop:
            log.warning("stopped by %s ...", stop.name)
            raise SystemExit(stop.exit_status)  # 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP

The first stop signal raises `Stopped`; later ones are ignored until the block ends, so that a second Ctrl-C or
a launcher's repeated SIGTERM cannot cut the cleanup short (SIGKILL still ends the process). A signal that was
ignored when the block started (SIGHUP under nohup) stays ignored. Outside the main thread nothing changes:
Python delivers signals to the main thread only.
"""

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that `except Exception` handlers
    that record a failure do not take a stop for one."""

    def __init__(self, signum):
        self.signum = signal.Signals(signum)
        super().__init__(self.signum.name)

    @property
    def name(self):
        return self.signum.name

    @property
    def exit_status(self):
        return 128 + int(self.signum)


@contextlib.contextmanager
def stop_on_signals():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def receive(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise Stopped(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, receive)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

"""SIGTERM, SIGINT and SIGHUP for a program that runs one child command at a time (a sweep's samplers and evaluators).

Inside `with StopSignals() as stop:` a signal is passed on to the running child (and any later one again, so
that a second Ctrl-C reaches it too) and the program waits for the child to end; `stop.run` then raises
`Interrupted`, as does the next `stop.run` or `stop.check()` when the signal came between two children. The
caller turns it into one message and the exit status 128 + signal (143 for SIGTERM, 130 for SIGINT).
A signal that was ignored when the program started (SIGHUP under nohup) stays ignored.

Each child runs in its own session: a Ctrl-C in the terminal reaches it once, through this program, rather
than twice, and a launcher child (mpiexec, torchrun) passes the signal on to its ranks itself.
"""

import signal
import subprocess

from guided_diffusion.runtime.stop_signals import STOP_SIGNALS, Stopped

# The sampler's stop exception and signal set (runtime/stop_signals.py), here under the name a sweep gives it:
# the running child got the signal and has ended.
Interrupted = Stopped


class StopSignals:
    """Catches the stop signals while active; the one in use is `StopSignals.active` (None outside)."""

    active = None

    def __init__(self):
        self.signum = None  # the first stop signal received
        self._child, self._forwarded, self._previous = None, False, {}

    def __enter__(self):
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._receive)
        StopSignals.active = self
        return self

    def __exit__(self, *exc_info):
        StopSignals.active = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _receive(self, signum, frame):
        self.signum = self.signum or signum
        self._forward(signum)

    def _forward(self, signum):
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)
            self._forwarded = True

    def check(self):
        """Raise Interrupted if a stop signal has arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def run(self, command, **popen_args):
        """Run `command` to its end and return its exit status; Interrupted if a stop signal came before or
        while it ran (the child got the signal and was waited for)."""
        self.check()
        child = subprocess.Popen(command, start_new_session=True, **popen_args)
        self._child, self._forwarded = child, False
        try:
            if self.signum is not None and not self._forwarded:  # it came while the child was being started
                self._forward(self.signum)
            status = child.wait()
        finally:
            self._child = None
        self.check()
        return status


def run_until_stopped(body, log, program):
    """`body()`'s exit status, run inside StopSignals; a stop signal ends it with one warning (the running
    child got the signal and has ended, finished work is kept) and the exit status 128 + signal."""
    try:
        with StopSignals() as stop:
            status = body()
            stop.check()  # a signal after the last child: the work is written, the exit status says stopped
        return status
    except Interrupted as stopped:
        log.warning("%s stopped by %s (passed on to the running command, which has ended); finished work is "
                    "kept: run the same command again to continue", program, stopped.signum.name)
        return stopped.exit_status

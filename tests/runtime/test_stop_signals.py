"""SIGTERM, SIGINT and SIGHUP as `Stopped` in the main thread (guided_diffusion/runtime/stop_signals.py)."""

import os
import signal
import threading
import time

import pytest

from guided_diffusion.runtime.stop_signals import Stopped, stop_on_signals


def wait_for_signal():
    deadline = time.time() + 10
    while time.time() < deadline:
        time.sleep(0.01)
    raise AssertionError("no signal arrived")


@pytest.fixture
def not_ignored():
    """Under nohup (SIGHUP) or in a shell's background job (SIGINT) a signal arrives ignored, and an ignored
    signal stays ignored by design: the tests of a stop signal set the default disposition first."""
    inherited = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    for s in inherited:
        if inherited[s] is signal.SIG_IGN:
            signal.signal(s, signal.SIG_DFL)
    yield
    for s, handler in inherited.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_stop_signal_raises_stopped_and_later_ones_let_the_cleanup_finish(signum, status, not_ignored):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    cleaned = False
    with pytest.raises(Stopped) as info:
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signum)
                wait_for_signal()
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a launcher's second signal during the cleanup
                time.sleep(0.05)
                cleaned = True
    assert cleaned and info.value.exit_status == status and info.value.name == signal.Signals(signum).name
    assert not isinstance(info.value, Exception)  # `except Exception` handlers do not take it for a failure
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_signal_stays_ignored_and_other_threads_are_left_alone():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    seen = []

    def in_a_thread():
        with stop_on_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]

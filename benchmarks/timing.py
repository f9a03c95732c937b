"""Interleaved timing for the benchmarks: every method runs once per round, so machine load hits all alike."""

import statistics
import time


def device_sync(device):
    """A call that waits for the kernels queued on `device` (a GPU runs them after the call returns); nothing to
    wait for on the CPU."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def timed(methods, warmup, repeats, sync=lambda: None):
    """Median seconds of each method over the timed rounds, each method's first output and the seconds of its
    first call (compile and warm-up included). `sync` (`device_sync(device)`) runs before the clock starts and
    before it stops, so that a GPU's queued work is counted where it was queued."""
    times, outputs, first = {name: [] for name in methods}, {}, {}
    for round_index in range(warmup + repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            out = fn()
            sync()
            elapsed = time.perf_counter() - start
            outputs.setdefault(name, out)
            first.setdefault(name, elapsed)
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}, outputs, first

"""Interleaved timing for the benchmarks: every method runs once per round, so machine load hits all alike."""

import statistics
import time


def timed(methods, warmup, repeats):
    """Median seconds of each method over the timed rounds, each method's first output and the seconds of its
    first call (compile and warm-up included)."""
    times, outputs, first = {name: [] for name in methods}, {}, {}
    for round_index in range(warmup + repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            outputs.setdefault(name, out)
            first.setdefault(name, elapsed)
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}, outputs, first

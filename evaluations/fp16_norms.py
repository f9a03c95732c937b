"""float16 squared row norms exactly as the ADM evaluator's TensorFlow computes them on CPU (the norms
that decide, to the last float16 step, which samples fall inside a k-NN ball)."""

import numpy as np

__all__ = ["NORM_MODES", "fp16_squared_norms"]


def _torch():
    import torch

    return torch


# --- float16 squared norms -----------------------------------------------------------------------------
#
# The reference takes the float16 squared norms with ``tf.reduce_sum(tf.square(U), 1)``.  On CPU,
# TensorFlow's Eigen kernel sums float16 in float16: vectorised in packets of 8 lanes (AVX ``Packet8h``,
# every packet add rounded to float16), four packet accumulators per pass that are then added one after
# the other, a recursive split of rows longer than 8 * 200 values into packet-aligned halves, the 8
# lanes of the final packet summed in float32 and rounded, and a scalar float16 tail.  Those roundings
# decide on which float16 value a norm lands, and a norm one float16 step off can flip a borderline
# sample in or out of a ball, so ``norms="tf_cpu"`` (the default) replays that order exactly.
# ``norms="rounded"`` instead rounds the float32-accumulated sum once (what a GPU reduction does).

_EIGEN_PACKET = 8
_EIGEN_HALF_LEAF = 200
NORM_MODES = ("tf_cpu", "rounded")


def _ceil_div(a, b):
    return -(-a // b)


def _to_half_grid(a):
    """Round float32 values to float16 (round-to-nearest-even, subnormals included), kept as float32.

    A float16 addition in Eigen (and numpy, and torch on CPU) is a float32 addition rounded this way."""
    return a.astype(np.float16).astype(np.float32)


def _eigen_half_leaf(s):
    P = _EIGEN_PACKET
    rows, n = s.shape
    start = 0
    acc0 = np.zeros((rows, P), np.float32)
    if n >= 4 * P:
        stop4 = (n // (4 * P)) * (4 * P)
        # [steps, rows, 4 packets of P lanes], contiguous per step
        blocks = np.ascontiguousarray(
            s[:, :stop4].reshape(rows, stop4 // (4 * P), 4 * P).transpose(1, 0, 2)
        )
        acc = np.zeros((rows, 4 * P), np.float32)
        for step in blocks:  # the four packet accumulators side by side
            acc = _to_half_grid(acc + step)
        acc = acc.reshape(rows, 4, P)
        acc0 = _to_half_grid(acc[:, 0] + acc[:, 1])
        acc0 = _to_half_grid(acc0 + acc[:, 2])
        acc0 = _to_half_grid(acc0 + acc[:, 3])
        start = stop4
    if start <= n - P:
        stop = (n // P) * P
        for j in range(start, stop, P):
            acc0 = _to_half_grid(acc0 + s[:, j : j + P])
        start = stop
    tail = np.zeros(rows, np.float32)
    for j in range(start, n):
        tail = _to_half_grid(tail + s[:, j])
    # horizontal float32 sum of the 8 lanes, in the order of Eigen's AVX/SSE predux
    pairs = acc0[:, :4] + acc0[:, 4:]
    total = (pairs[:, 0] + pairs[:, 2]) + (pairs[:, 1] + pairs[:, 3])
    return _to_half_grid(tail + _to_half_grid(total))


def _eigen_half_sum(s, first):
    """Row sums of float16 values ``s`` (held as float32) in the order of Eigen's tree reduction;
    ``first`` is the flat index of the rows' first element (only its value modulo 8 matters)."""
    P = _EIGEN_PACKET
    n = s.shape[1]
    if n > P * _EIGEN_HALF_LEAF:
        split = P * _ceil_div(first + _ceil_div(n, 2), P)
        num_left = min(split - first, n)
        acc = _eigen_half_sum(s[:, :num_left], first)
        if num_left < n:
            acc = _to_half_grid(acc + _eigen_half_sum(s[:, num_left:], split))
        return acc
    return _eigen_half_leaf(s)


def fp16_squared_norms(x, mode="tf_cpu", chunk_rows=8192):
    """float16 squared row norms of ``x`` (a torch tensor ``[N, D]``) as the reference computes them.

    Each square is rounded to float16; the row sums follow ``mode`` (see ``NORM_MODES``).  Row ``r`` is
    treated as row ``r`` of the reference's block (blocks start at multiples of 10000 rows), which only
    matters when ``D`` is not a multiple of 8.  The ``"tf_cpu"`` replay runs in numpy on the CPU (it is
    a chain of small sequential steps, which suits neither a GPU nor a contended thread pool).
    """
    torch = _torch()
    if mode == "rounded":
        x16 = x.to(torch.float16)
        return torch.sum(x16 * x16, dim=1)
    if mode != "tf_cpu":
        raise ValueError(f"unknown norm mode {mode!r}; expected one of {NORM_MODES}")
    xs = x.detach().to("cpu", torch.float32).numpy()
    n, d = xs.shape
    out = np.zeros(n, np.float32)
    with np.errstate(over="ignore"):  # float16 overflow to inf is part of the semantics
        _replay_norms(xs, out, chunk_rows)
    return torch.from_numpy(out.astype(np.float16)).to(x.device)


def _replay_norms(xs, out, chunk_rows):
    n, d = xs.shape
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        sq = _to_half_grid(np.square(xs[r0:r1].astype(np.float16).astype(np.float32)))
        if d == 0:
            continue
        phase = (np.arange(r0, r1, dtype=np.int64) * d) % _EIGEN_PACKET
        for p in np.unique(phase):
            sel = phase == p
            out[r0:r1][sel] = _eigen_half_sum(sq[sel] if not sel.all() else sq, int(p))

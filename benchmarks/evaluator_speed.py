"""Precision/recall speed: our torch implementation vs the ADM evaluator's TensorFlow DistanceBlock.

    python benchmarks/evaluator_speed.py                      # 50,000 reference x 10,000 samples, 2048-d
    python benchmarks/evaluator_speed.py --n_ref 8000 --n_sample 4000   # a quick run on a small CPU

Both methods get the same random pool-like features (non-negative, squared norms of a few hundred, so
the float16 path is taken) and must agree on precision and recall.  The TensorFlow side re-creates the
reference's approach in TF 2: a ``tf.function`` computing float16 pairwise squared distances with a
float32 fallback (``tf.cond`` on finiteness), 10,000 x 10,000 blocks, the k-th neighbour radius from a
threaded ``np.partition`` over dense float32 distance rows, and block-wise ``less than`` reductions for
the manifold membership.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from multiprocessing import cpu_count
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluations import manifolds, metrics  # noqa: E402


def pool_like_features(n: int, basis: np.ndarray, rng: np.random.Generator, shift: float = 0.0):
    """Non-negative features around a shared low-rank structure, like Inception pool_3 activations
    (squared norms of a few hundred: the float16 path)."""
    codes = rng.standard_normal((n, basis.shape[0])).astype(np.float32) + shift
    noise = rng.standard_normal((n, basis.shape[1])).astype(np.float32) * 0.2
    return np.maximum(codes @ basis + noise + 0.35, 0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the reference approach, in TensorFlow 2
# --------------------------------------------------------------------------------------------------


class TFDistanceBlockPR:
    """The ADM evaluator's ManifoldEstimator / DistanceBlock, rebuilt with tf.function for TF 2."""

    def __init__(self, k: int = 3, row_batch_size: int = 10000, col_batch_size: int = 10000):
        import tensorflow as tf

        self.tf = tf
        self.k = k
        self.row_batch_size = row_batch_size
        self.col_batch_size = col_batch_size
        spec = tf.TensorSpec([None, None], tf.float32)

        def sq_dists(a, b):
            na = tf.reshape(tf.reduce_sum(tf.square(a), 1), [-1, 1])
            nb = tf.reshape(tf.reduce_sum(tf.square(b), 1), [1, -1])
            return tf.maximum(na - 2 * tf.matmul(a, b, transpose_b=True) + nb, 0.0)

        def distances(a, b):
            d16 = sq_dists(tf.cast(a, tf.float16), tf.cast(b, tf.float16))
            return tf.cond(
                tf.reduce_all(tf.math.is_finite(d16)),
                lambda: tf.cast(d16, tf.float32),
                lambda: sq_dists(a, b),
            )

        @tf.function(input_signature=[spec, spec])
        def block(a, b):
            return distances(a, b)

        @tf.function(input_signature=[spec, spec, spec, spec])
        def less_thans(a, radii_a, b, radii_b):
            d = distances(a, b)[..., None]
            a_in = tf.reduce_any(d <= radii_b, axis=1)
            b_in = tf.reduce_any(d <= radii_a[:, None], axis=0)
            return a_in, b_in

        self._block, self._less_thans = block, less_thans

    def _partition(self, rows: np.ndarray, kth) -> np.ndarray:
        workers = max(1, min(cpu_count(), len(rows)))
        bounds = np.linspace(0, len(rows), workers + 1).astype(int)
        parts = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        with ThreadPool(workers) as pool:
            done = pool.map(partial(np.partition, kth=kth, axis=1), parts)
        return np.concatenate(done, axis=0)

    def radii(self, feats: np.ndarray) -> np.ndarray:
        n = len(feats)
        out = np.zeros([n, 1], np.float32)
        rows_buf = np.zeros([self.row_batch_size, n], np.float32)
        kth = np.arange(self.k + 1)
        for r0 in range(0, n, self.row_batch_size):
            r1 = min(r0 + self.row_batch_size, n)
            for c0 in range(0, n, self.col_batch_size):
                c1 = min(c0 + self.col_batch_size, n)
                rows_buf[: r1 - r0, c0:c1] = self._block(feats[r0:r1], feats[c0:c1]).numpy()
            out[r0:r1, 0] = self._partition(rows_buf[: r1 - r0], kth)[:, self.k]
        return out

    def precision_recall(self, ref: np.ndarray, sample: np.ndarray):
        r_ref, r_smp = self.radii(ref), self.radii(sample)
        ref_in = np.zeros([len(ref), 1], bool)
        smp_in = np.zeros([len(sample), 1], bool)
        for r0 in range(0, len(ref), self.row_batch_size):
            r1 = r0 + self.row_batch_size
            for c0 in range(0, len(sample), self.col_batch_size):
                c1 = c0 + self.col_batch_size
                a_in, b_in = self._less_thans(ref[r0:r1], r_ref[r0:r1], sample[c0:c1], r_smp[c0:c1])
                ref_in[r0:r1] |= a_in.numpy()
                smp_in[c0:c1] |= b_in.numpy()
        return float(smp_in.mean()), float(ref_in.mean()), r_ref[:, 0], r_smp[:, 0]


# --------------------------------------------------------------------------------------------------


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n_ref", type=int, default=50000)
    p.add_argument("--n_sample", type=int, default=10000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--skip_tf", action="store_true", help="time only the torch implementation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rng = np.random.default_rng(args.seed)
    basis = rng.standard_normal((16, args.dim)).astype(np.float32) * 0.12
    ref = pool_like_features(args.n_ref, basis, rng)
    sample = pool_like_features(args.n_sample, basis, rng, shift=0.3)
    device = manifolds.resolve_device(args.device)

    # warm-up on a small slice (thread pools, kernels, tf.function tracing)
    warm = slice(0, min(256, args.n_sample))
    metrics.precision_recall(ref[warm], sample[warm], args.k, device=device)
    (p_t, r_t), t_torch = _timed(lambda: metrics.precision_recall(ref, sample, args.k, device=device))
    rows = [("torch (evaluations.metrics), " + device.type, t_torch)]

    same = None
    if not args.skip_tf:
        tf_pr = TFDistanceBlockPR(args.k)
        tf_pr.precision_recall(ref[warm], sample[warm])
        (p_f, r_f, rad_ref_tf, _), t_tf = _timed(lambda: tf_pr.precision_recall(ref, sample))
        rows.append(("TensorFlow DistanceBlock (reference approach)", t_tf))
        rad_ref = metrics.manifold_radii(ref, args.k, device=device)
        same = (p_t, r_t) == (p_f, r_f)
        radii_err = float(np.max(np.abs(rad_ref - rad_ref_tf) / np.maximum(rad_ref_tf, 1e-12)))

    slowest = max(t for _, t in rows)
    print(f"\nprecision/recall, k={args.k}, {args.dim}-d features\n")
    print("| method | N_ref | N_sample | seconds | speedup |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {args.n_ref} | {args.n_sample} | {t:.2f} | {slowest / t:.2f}x |")
    print(f"\ntorch: precision {p_t:.6f}, recall {r_t:.6f}")
    if same is not None:
        print(f"TF:    precision {p_f:.6f}, recall {r_f:.6f}")
        print(f"same precision/recall: {'yes' if same else 'NO'}; "
              f"max relative difference of reference radii: {radii_err:.2e}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

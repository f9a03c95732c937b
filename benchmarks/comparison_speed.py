"""A paired comparison's cost with and without the bootstrap replicate cache (`adm-evaluate --bootstrap_cache`).

    python benchmarks/comparison_speed.py                    # the testbed's shape: 2,000 vs 2,000, 1,000 resamples
    python benchmarks/comparison_speed.py --n 500 --n_boot 200    # a quick run

Two sample batches of random features shaped like the Fashion-MNIST network's (pool 128-d, spatial 2,048-d,
10 classes) against a reference of `--n_ref` rows. Rows: a comparison that resamples both batches (what
every comparison cost before the cache), and one that reads both batches' replicates back (what a sweep's
comparison costs once each point was scored with intervals); the two must give the same numbers. Not timed:
featurising the images and the point estimates, which a comparison computes either way. The interleaved
rounds of `timing.timed` make the ratio robust to a busy machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402  (benchmarks/timing.py, beside this script)

from evaluations import bootstrap  # noqa: E402
from evaluations.replicate_cache import ReplicateStore  # noqa: E402


def features(n, rng, shift=0.0, dims=(128, 2048, 10)):
    pool_dim, spatial_dim, classes = dims
    logits = rng.standard_normal((n, classes)) * 2 + shift
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"pool": np.maximum(rng.standard_normal((n, pool_dim)) + 0.3 + shift, 0).astype(np.float32),
            "spatial": (rng.standard_normal((n, spatial_dim)) + shift).astype(np.float32),
            "probs": probs.astype(np.float32)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images per sample batch")
    p.add_argument("--n_ref", type=int, default=10000, help="reference rows (the Fashion-MNIST test split)")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed_sets", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1, help="timed rounds (each method once per round)")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    reference = bootstrap.Reference(features(args.n_ref, rng))
    acts = {"A": features(args.n, rng), "B": features(args.n, rng, shift=0.1)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {}  # the store keys entries on files: stand-ins for the batches and the reference
        for name in ("A", "B", "ref"):
            files[name] = tmp / f"{name}.npz"
            np.savez(files[name], seed=np.array(len(files)))

        def stores():
            return {name: ReplicateStore(tmp / "cache", files[name], files["ref"], "synthetic", {}) for name in acts}

        # the point estimates: computed when a batch is loaded, with or without the cache (not timed)
        estimates = {name: bootstrap.point_metrics(reference, acts[name]) for name in acts}

        def comparison(store_for):
            a, b = (bootstrap.SampleBootstrap(reference, acts[name], store_for.get(name)) for name in ("A", "B"))
            return bootstrap.compare(a, b, n_boot=args.n_boot, num_seed_sets=args.seed_sets,
                                     a_metrics=estimates["A"], b_metrics=estimates["B"])

        warm = stores()
        for name in acts:  # what the points' own scoring leaves behind
            bootstrap.SampleBootstrap(reference, acts[name], warm[name]).replicates(args.n_boot, 0)
        methods = {"resampling both batches": lambda: comparison({}),
                   "replicates read back (--bootstrap_cache)": lambda: comparison(stores())}
        seconds, outputs, _ = timed(methods, warmup=0, repeats=args.repeats)

    same = len({json.dumps(out, sort_keys=True) for out in outputs.values()}) == 1
    base = seconds["resampling both batches"]
    print(f"Paired comparison of {args.n} vs {args.n} images, {args.n_boot} resamples, {args.seed_sets} seed "
          f"sets, reference {args.n_ref} rows (median of {args.repeats} round(s)); identical results: "
          f"{'yes' if same else 'NO'}\n")
    print("| comparison | seconds | speed-up |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {base / value:.1f}x |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

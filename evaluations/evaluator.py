"""ADM sample-quality evaluator: Inception Score, FID, sFID, precision, recall and KID of an image batch.

    python -m evaluations.evaluator REF.npz SAMPLE.npz [--json OUT] [--batch_size N] [--backend NAME]
                                    [--inception_graph PATH] [--cache_dir DIR] [--no_cache] [--download]
                                    [--device DEV] [--resize]
                                    [--intervals N_BOOT] [--compare OTHER.npz [--seed_sets K]]

``--intervals`` adds bootstrap 95% intervals (the sample batch resampled, the reference held fixed);
``--compare OTHER.npz`` compares two batches made from the same seeds: OTHER - SAMPLE per metric with a
paired interval and per-seed-set differences (see :mod:`evaluations.bootstrap`).

A reimplementation of OpenAI's ``guided-diffusion/evaluations/evaluator.py`` that gives the same
numbers on current numpy / scipy / TensorFlow 2: images are streamed from the ``.npz`` files in
batches, features come from a pluggable backend (default: the ADM reference Inception graph), and
precision/recall runs in torch.  Per-batch activations and statistics are cached in a user cache folder
(``--cache_dir``, ``$PAG_EVAL_CACHE`` or ``~/.cache/pag_adm/activations``), never beside the batches, and
reused while the batch file, the backend and its weights are unchanged.
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from guided_diffusion.runtime.files import atomic_write_text

from . import bootstrap, metrics
from . import kid as kid_module
from .activation_cache import (
    CACHE_ENV_VAR,
    BatchFeatures,
    cache_entry,
    cache_path_for,
    load_cache,
    resolve_cache_dir,
    save_cache,
)
from .backends import backend_fingerprint, check_features, create_backend
from .npz import IMAGES_KEY, NpzImageReader, inspect_npz, validate_image_header
from .resolution import resize_images
from .scoring import Scorer

DEFAULT_BATCH_SIZE = 64
METRIC_KEYS = ("inception_score", "fid", "sfid", "precision", "recall", "kid")

__all__ = ["BatchFeatures", "Evaluator", "Scorer", "cache_path_for", "main", "METRIC_KEYS"]

# ----------------------------------------------------------------------------------------------------
# evaluator
# ----------------------------------------------------------------------------------------------------


class Evaluator:
    """Computes the ADM metrics of a sample batch against a reference batch.

    `backend` is a registered backend name (default "inception") or a backend object (anything with `name`
    and `compute(batch_uint8_nhwc) -> {"pool", "spatial", "probs"}`); a named backend is only built when some
    activations actually have to be computed. It is called on `batch_size` images at a time; with
    `use_cache`, activations are kept in the folder `cache_dir` (default: see `evaluations.activation_cache`).
    Precision and recall run on `device` (default: CUDA when available, else CPU) with neighbourhood size `k`
    (the ADM evaluator uses 3), summing float16 squared norms as `norms` says (see
    `evaluations.metrics.NORM_MODES`; "tf_cpu" reproduces the reference on CPU). `inception_graph` is the
    Inception backend's graph file (default: `$ADM_INCEPTION_GRAPH` or
    `~/.cache/pag_adm/classify_image_graph_def.pb`). With `resize`, samples whose resolution differs from the
    reference images' are resized to theirs (bicubic); without it such a pair is refused.
    `kid_normalisation` scales the features for KID (see `evaluations.kid`): "auto" (the published kernel for
    the Inception backend, reference RMS scaling for every other backend), "none" or "reference_rms";
    `kid_subsets`, `kid_subset_size` and `kid_seed` set KID's subset average (torch-fidelity's defaults).
    """

    def __init__(
        self,
        backend="inception",
        *,
        batch_size=DEFAULT_BATCH_SIZE,
        use_cache=True,
        cache_dir=None,
        device=None,
        k=3,
        inception_graph=None,
        progress=True,
        norms="tf_cpu",
        resize=False,
        kid_normalisation="auto",
        kid_subsets=kid_module.DEFAULT_SUBSETS,
        kid_subset_size=kid_module.DEFAULT_SUBSET_SIZE,
        kid_seed=kid_module.DEFAULT_SEED,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        if norms not in metrics.NORM_MODES:
            raise ValueError(f"norms must be one of {metrics.NORM_MODES}; got {norms!r}")
        if isinstance(backend, str):
            self._backend_name, self._backend = backend, None
        else:
            if not hasattr(backend, "compute") or not hasattr(backend, "name"):
                raise TypeError("backend must be a name or an object with `name` and `compute(batch)`")
            self._backend_name, self._backend = str(backend.name), backend
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.device = device
        self.k = k
        self.inception_graph = inception_graph
        self.progress = progress
        self.norms = norms
        self.resize = resize
        if kid_normalisation != "auto" and kid_normalisation not in kid_module.NORMALISATIONS:
            raise ValueError(
                f"kid_normalisation must be 'auto' or one of {kid_module.NORMALISATIONS}; got {kid_normalisation!r}"
            )
        self._kid_normalisation = kid_normalisation
        self.kid_options = dict(subsets=kid_subsets, subset_size=kid_subset_size, seed=kid_seed)

    # -- backend --------------------------------------------------------------------------------

    @property
    def backend_name(self):
        return self._backend_name

    @property
    def kid_normalisation(self):
        """The KID feature scaling in use (``"auto"`` resolved for this backend)."""
        if self._kid_normalisation == "auto":
            return kid_module.default_normalisation(self._backend_name)
        return self._kid_normalisation

    @property
    def backend(self):
        if self._backend is None:
            self._backend = create_backend(self._backend_name, graph_path=self.inception_graph)
        return self._backend

    def _fingerprint(self):
        """Identifies the backend and its weights, for the activation cache."""
        if self._backend is None and self._backend_name == "inception":
            # Keyed by the graph file's content, so that a cache hit needs no TensorFlow at all.
            from .inception import graph_fingerprint, resolve_graph_path

            return graph_fingerprint(resolve_graph_path(self.inception_graph))
        return backend_fingerprint(self.backend)

    def metric_settings(self):
        """What, besides the images and the reference, the metrics depend on (JSON-able): the backend's weights,
        k, the norms of the k-NN distances and KID's options."""
        return {"weights": self._fingerprint(), "k": self.k, "norms": self.norms,
                "kid_normalisation": self.kid_normalisation, "kid_options": self.kid_options}

    def close(self):
        if self._backend is not None and hasattr(self._backend, "close"):
            self._backend.close()

    # -- activations ----------------------------------------------------------------------------

    def compute_activations(self, path, resize_to=None):
        """Run the backend over every image of ``path`` (streamed in batches); no cache involved.

        ``resize_to`` (``(H, W)``) resizes each batch before the backend sees it.
        """
        from tqdm.auto import tqdm

        path = Path(path)
        validate_image_header(inspect_npz(path))
        backend = self.backend
        out = {}
        with NpzImageReader(path, IMAGES_KEY) as reader:
            n = len(reader)
            done = 0
            with tqdm(
                total=n,
                unit="img",
                desc=f"{backend.name} features: {path.name}",
                disable=not self.progress,
                leave=False,
            ) as bar:
                for batch in reader.batches(self.batch_size):
                    if resize_to is not None:
                        batch = resize_images(batch, resize_to)
                    feats = check_features(backend.name, backend.compute(batch), len(batch))
                    if not out:
                        out = {k: np.empty((n, v.shape[1]), np.float32) for k, v in feats.items()}
                    for key, value in feats.items():
                        if value.shape[1] != out[key].shape[1]:
                            raise ValueError(
                                f"backend {backend.name!r} changed the {key!r} feature size mid-batch"
                            )
                        out[key][done : done + len(batch)] = value
                    done += len(batch)
                    bar.update(len(batch))
        return out

    def _cache_entry(self, path, resize_to=None):
        """``(cache file, key)`` of the batch at ``path`` (see `cache_entry`), or None without a cache."""
        if not self.use_cache:
            return None
        return cache_entry(path, self._backend_name, self._fingerprint(), self.cache_dir, resize_to)

    def cached_features(self, path, resize_to=None):
        """The batch's activations and statistics from a valid cache entry, or None."""
        entry = self._cache_entry(Path(path), resize_to)
        return None if entry is None else load_cache(*entry)

    def batch_features(self, path, resize_to=None):
        """Activations and their statistics for the images of ``path``, from the cache when valid."""
        path = Path(path)
        entry = self._cache_entry(path, resize_to)
        if entry is not None:
            cached = load_cache(*entry)
            if cached is not None:
                return cached
        acts = self.compute_activations(path, resize_to)
        feats = BatchFeatures(
            acts=acts, stats={kind: metrics.statistics(acts[kind]) for kind in ("pool", "spatial")}
        )
        if entry is not None:
            save_cache(*entry, feats)
        return feats

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, ref_path, sample_path):
        """All the metrics of ``sample_path`` against ``ref_path`` (both ``.npz`` batches); see `Scorer`."""
        return Scorer(self, ref_path).score(sample_path)

    def compute_metrics(
        self, ref, sample, *, ref_name="reference"
    ):
        """Metrics from already computed features (``ref.acts`` may be ``None`` if it has statistics)."""
        if sample.acts is None:
            raise ValueError("the sample batch needs activations (images)")
        results = {
            "inception_score": metrics.inception_score(sample.acts["probs"])
        }
        for kind, metric in (("pool", "fid"), ("spatial", "sfid")):
            s_mu, s_sigma = sample.stats.get(kind) or metrics.statistics(sample.acts[kind])
            if kind in ref.stats:
                r_mu, r_sigma = ref.stats[kind]
            elif ref.acts is not None:
                r_mu, r_sigma = metrics.statistics(ref.acts[kind])
            else:
                raise ValueError(f"{ref_name} has neither {kind} statistics nor images")
            if np.shape(r_mu) != np.shape(s_mu):
                raise ValueError(
                    f"{ref_name}: reference {kind} statistics have dimension {np.shape(r_mu)[0]} but the "
                    f"{self._backend_name!r} backend gives {np.shape(s_mu)[0]}-d features; the stored "
                    "statistics were made with another feature network (use --backend inception)."
                )
            # The ADM evaluator calls sample_stats.frechet_distance(ref_stats): sample first.
            results[metric] = metrics.frechet_distance(s_mu, s_sigma, r_mu, r_sigma)
        if ref.acts is None:
            warnings.warn(
                f"{ref_name} has statistics but no images: precision and recall are not computed",
                RuntimeWarning,
            )
            results["precision"] = results["recall"] = None
        else:
            results["precision"], results["recall"] = metrics.precision_recall(
                ref.acts["pool"], sample.acts["pool"], self.k, device=self.device, norms=self.norms
            )
        results["kid"] = self._kid(ref, sample)
        return results

    def _kid(self, ref, sample):
        """KID against the reference images (``None`` for a statistics-only reference, like precision)."""
        if ref.acts is None:
            return None
        return kid_module.kid(
            ref.acts["pool"], sample.acts["pool"], normalisation=self.kid_normalisation,
            device=bootstrap.resolve_device(self.device), **self.kid_options,
        )[0]

    # -- intervals and paired comparisons (evaluations.scoring, evaluations.bootstrap) ---------------

    def reference(self, ref):
        """The reference prepared for bootstrap replicates, with this evaluator's settings."""
        return bootstrap.Reference(
            ref.acts, ref.stats, k=self.k, device=self.device, norms=self.norms,
            kid_normalisation=self.kid_normalisation, kid_subsets=self.kid_options["subsets"],
            kid_subset_size=self.kid_options["subset_size"], kid_seed=self.kid_options["seed"],
        )


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------


def _parser():
    from .backends import available_backends

    p = argparse.ArgumentParser(
        prog="adm-evaluate",
        description="Inception Score, FID, sFID, precision and recall of SAMPLE against REF "
        "(ADM evaluator).",
    )
    p.add_argument("ref_batch", help="reference batch .npz (arr_0 images and/or mu, sigma, mu_s, sigma_s)")
    p.add_argument("sample_batch", help="sample batch .npz (arr_0: uint8 images [N, H, W, 3])")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per backend call")
    p.add_argument(
        "--backend",
        default="inception",
        help=f"feature backend (registered: {', '.join(available_backends())})",
    )
    p.add_argument(
        "--inception_graph",
        default=None,
        help="classify_image_graph_def.pb (default: $ADM_INCEPTION_GRAPH or "
        "~/.cache/pag_adm/classify_image_graph_def.pb)",
    )
    p.add_argument("--cache_dir", default=None, metavar="DIR", help="folder of the activation caches, reused "
                   "while a batch file is unchanged; nothing is written beside the batches (default: "
                   f"${CACHE_ENV_VAR}, else $XDG_CACHE_HOME/pag_adm/activations or ~/.cache/pag_adm/activations)")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write activation caches")
    p.add_argument("--bootstrap_cache", default=None, metavar="DIR", help="keep each batch's bootstrap "
                   "replicates in DIR and reuse them while the batch, the reference and the settings are "
                   "unchanged: a table's comparisons then resample each batch once (default: not kept)")
    p.add_argument("--download", action="store_true", help="download the Inception graph if missing")
    p.add_argument("--device", default=None, help="torch device for precision/recall (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize samples whose resolution differs from the reference images' to theirs (bicubic); "
        "without it such a pair is refused",
    )
    stats = p.add_argument_group("intervals and paired comparison (evaluations.bootstrap)")
    stats.add_argument(
        "--intervals", type=int, default=None, metavar="N_BOOT",
        help="bootstrap 95%% intervals from N_BOOT resamples of the sample batch, reference held fixed "
        f"(default: off; {bootstrap.DEFAULT_BOOTSTRAP} with --compare). Costly at 50K without a GPU",
    )
    stats.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the resampled indices")
    stats.add_argument(
        "--compare", metavar="OTHER", default=None,
        help="a second batch from the same seeds: report OTHER - SAMPLE with paired intervals",
    )
    stats.add_argument(
        "--seed_sets", type=int, default=bootstrap.DEFAULT_SEED_SETS,
        help="with --compare: disjoint sets of consecutive image indices to compare on (default 5)",
    )
    stats.add_argument(
        "--kid_normalisation", default="auto", choices=("auto",) + kid_module.NORMALISATIONS,
        help="KID feature scaling: auto = none for inception, reference_rms for other backends",
    )
    stats.add_argument("--kid_subsets", type=int, default=kid_module.DEFAULT_SUBSETS)
    stats.add_argument("--kid_subset_size", type=int, default=kid_module.DEFAULT_SUBSET_SIZE)
    return p


def _check_finite_results(results):
    """A NaN or infinite score is a failure, not a result to print and exit 0 with."""
    bad = [
        name
        for name, value in results.items()
        if isinstance(value, (float, np.floating)) and not np.isfinite(value)
    ]
    if bad:
        raise ValueError(
            f"the evaluation gave non-finite {', '.join(bad)} ({', '.join(f'{n}={results[n]}' for n in bad)}); "
            "check the batches for broken images or features"
        )


def _check_statistics_args(args):
    if args.intervals is not None and args.intervals < 2:
        raise ValueError(f"--intervals needs at least 2 resamples (1000 is usual); got {args.intervals}")
    if args.seed_sets < 1:
        raise ValueError(f"--seed_sets must be at least 1; got {args.seed_sets}")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
        raise ValueError("--kid_subsets must be >= 1 and --kid_subset_size >= 2")


def _make_evaluator(args):
    if args.download and args.backend == "inception":
        from .download_inception import download_inception_graph

        args.inception_graph = str(download_inception_graph(args.inception_graph))
    return Evaluator(
        args.backend,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        cache_dir=args.cache_dir,
        device=args.device,
        inception_graph=args.inception_graph,
        progress=not args.quiet,
        kid_normalisation=args.kid_normalisation,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        resize=args.resize,
    )


def _kid_json(evaluator, ref_images):
    return {"normalisation": evaluator.kid_normalisation, **evaluator.kid_options,
            "available": ref_images}


def _write_json(path, payload):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _fmt(value):
    return "n/a" if value is None else repr(float(value))


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _check_statistics_args(args)
        if args.compare:
            bootstrap.check_paired_batches(args.sample_batch, args.compare)
    except (ValueError, FileNotFoundError) as exc:
        print(f"adm-evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.compare:
        return _main_compare(args)
    try:
        evaluator = _make_evaluator(args)
        try:
            scorer = Scorer(evaluator, args.ref_batch, intervals=args.intervals or 0,
                            bootstrap_seed=args.bootstrap_seed, bootstrap_cache=args.bootstrap_cache)
            results = scorer.score(args.sample_batch)
        finally:
            evaluator.close()
        _check_finite_results(results)
    except (ValueError, OSError, ImportError) as exc:
        print(f"adm-evaluate: error: {exc}", file=sys.stderr)
        return 2

    print("Inception Score:", _fmt(results["inception_score"]))
    print("FID:", _fmt(results["fid"]))
    print("sFID:", _fmt(results["sfid"]))
    print("Precision:", _fmt(results["precision"]))
    print("Recall:", _fmt(results["recall"]))
    print("KID:", _fmt(results["kid"]))
    if args.intervals:
        from .tables import values_table

        print(f"\n95% bootstrap intervals ({args.intervals} resamples of the sample batch, reference held "
              f"fixed, seed {args.bootstrap_seed}):\n")
        print(values_table(["batch"], [([Path(args.sample_batch).name], results, "")]))
    if args.json:
        payload = {
            "ref_batch": str(args.ref_batch),
            "sample_batch": str(args.sample_batch),
            "backend": args.backend,
            **results,
            "kid_options": _kid_json(evaluator, results["kid"] is not None),
        }
        if args.intervals:
            payload["bootstrap"] = bootstrap.bootstrap_description(args.intervals, args.bootstrap_seed)
        _write_json(args.json, payload)
    return 0


def _main_compare(args):
    from .tables import comparison_table

    n_boot = args.intervals or bootstrap.DEFAULT_BOOTSTRAP
    try:
        evaluator = _make_evaluator(args)
        try:
            scorer = Scorer(evaluator, args.ref_batch, intervals=n_boot, bootstrap_seed=args.bootstrap_seed,
                            seed_sets=args.seed_sets, bootstrap_cache=args.bootstrap_cache)
            result = scorer.compare(args.sample_batch, args.compare)
        finally:
            evaluator.close()
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"adm-evaluate: error: {exc}", file=sys.stderr)
        return 2
    name_a, name_b = Path(args.sample_batch).name, Path(args.compare).name
    print(f"A = {args.sample_batch}\nB = {args.compare}\n")
    print(comparison_table(result, "A", "B"))
    print(f"[...]: 95% bootstrap intervals ({n_boot} resamples, seed {args.bootstrap_seed}, reference held "
          "fixed; B - A paired: the same resampled indices in both). Bold: the interval excludes 0. "
          f"Seed sets: {args.seed_sets} disjoint sets of consecutive image indices.")
    seed_note = bootstrap.unchecked_seeds_note(args.sample_batch, args.compare)
    if seed_note:
        print(seed_note)
    if args.json:
        _write_json(args.json, {
            "ref_batch": str(args.ref_batch),
            "batch_a": str(args.sample_batch),
            "batch_b": str(args.compare),
            "names": {"a": name_a, "b": name_b},
            "backend": args.backend,
            "seeds_checked": seed_note is None,
            **result,
            "kid_options": _kid_json(evaluator, result["a"]["kid"] is not None),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())

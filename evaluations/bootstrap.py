"""How much of a metric is the seeds: bootstrap intervals and seed-paired comparisons of sample batches.

**Intervals.**  A bootstrap replicate draws the sample batch's rows with replacement (n of n) and recomputes
every metric against the *unchanged* reference: the reference is held fixed, so an interval says how much
the number moves with the sample seeds, not with the reference set.  Replicates come from
``numpy.random.default_rng(seed)`` (one ``integers(0, n, n)`` draw per replicate), so the same seed and count
give the same resamples, which is also what pairs two batches made from the same seeds.

Resampling with replacement repeats rows, which biases set-based metrics (FID and KID rise, recall falls)
by about the small-sample bias they already have.  For those metrics (all but precision, a plain mean over
the samples) the 95% interval is the 2.5-97.5 percentile range of the replicates *shifted by the bootstrap's
bias estimate* (mean of the replicates minus the estimate): it is centred where the estimate is and
describes the metric's expected value at this sample count and reference.  (FID's own small-sample bias is
not removed: FIDs are comparable only at equal counts.)  Precision gets the plain percentile interval.

Per replicate, for speed (the results are those of the metrics code up to float64 rounding):

* FID / sFID: ``tr sqrtm(S R) = sum sqrt(eig(R^1/2 S R^1/2))`` with the reference's ``R^1/2`` computed once,
  from a Gram matrix of the distinct resampled rows;
* KID: the unbiased MMD^2 of the resampled batch against the whole reference, i.e. the value the subset
  average estimates, without the subsets' own noise;
* precision: the mean, over the resampled rows, of "inside the reference manifold" (fixed per sample);
* recall: the sample points keep the k-NN radii of the whole batch; a resample covers the reference points
  in the balls of the rows it drew;
* Inception Score: over the resampled rows, in the evaluator's splits.

**Paired comparison.**  Two batches made from the same seeds (image i from the same noise in both) are
resampled with the *same* indices; the interval of ``B - A`` comes from the replicate differences, so the
seeds' common part cancels.  The batch is also cut into K disjoint seed sets (consecutive image indices);
each metric is computed on every set for both batches (KID there as the full unbiased estimate against the
whole reference, without subsets), and the sets each side wins are counted.
"""

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np

from . import kid as kid_module
from . import metrics
from .manifolds import resolve_device
from .npz import inspect_npz

# Metric names as in the evaluator's JSON, and which way is better.
DIRECTIONS = {
    "fid": "lower",
    "sfid": "lower",
    "kid": "lower",
    "inception_score": "higher",
    "precision": "higher",
    "recall": "higher",
}
# Metrics whose replicates are biased by the repeated rows of a resample (see the module docstring).
RECENTRED = ("fid", "sfid", "kid", "inception_score", "recall")
# Where each metric's values can lie (KID, an unbiased estimate, can be negative).
RANGES = {"fid": (0.0, np.inf), "sfid": (0.0, np.inf), "inception_score": (1.0, np.inf),
          "precision": (0.0, 1.0), "recall": (0.0, 1.0)}
DEFAULT_BOOTSTRAP = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED_SETS = 5
_ELEMENTS_PER_CHUNK = 1 << 24  # replicates x rows handled at once (bounds the memory of the index arrays)

__all__ = [
    "DIRECTIONS",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_LEVEL",
    "DEFAULT_SEED_SETS",
    "Reference",
    "SampleBootstrap",
    "bootstrap_interval",
    "intervals",
    "point_metrics",
    "compare",
    "seed_sets",
    "check_seed_sets",
    "unchecked_seeds_note",
    "check_paired_batches",
    "resolve_device",
]


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def _few_threads_for_small_matrices(device, dim):
    """One CPU thread for the many small eigenvalue problems of a low-dimensional feature space: threads
    cost more than they save there (4x slower per call on a busy 2-core machine)."""
    torch = _torch()
    if device.type != "cpu" or dim > 512:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _tensor(x, device):
    torch = _torch()
    return torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)


# ----------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------


class Reference:
    """The reference batch, prepared once for any number of sample batches.

    `acts` are its `{"pool", "spatial", ...}` activations, or None for a statistics-only reference (then KID,
    precision and recall are not available). `stats` are `{"pool": (mu, sigma), "spatial": (mu, sigma)}`,
    computed from `acts` where missing (the evaluator passes the statistics stored in the reference .npz,
    which take precedence). For `kid_normalisation` see `evaluations.kid` ("none" for Inception,
    "reference_rms" for other backends).
    """

    def __init__(
        self,
        acts=None,
        stats=None,
        *,
        k=3,
        device=None,
        norms="tf_cpu",
        kid_normalisation="none",
        kid_subsets=kid_module.DEFAULT_SUBSETS,
        kid_subset_size=kid_module.DEFAULT_SUBSET_SIZE,
        kid_seed=kid_module.DEFAULT_SEED,
    ):
        self.acts = acts
        self.stats = dict(stats or {})
        for kind in ("pool", "spatial"):
            if kind not in self.stats:
                if acts is None:
                    raise ValueError(f"the reference has neither {kind} statistics nor activations")
                self.stats[kind] = metrics.statistics(acts[kind])
        self.k, self.device, self.norms = k, resolve_device(device), norms
        self.kid_options = dict(subsets=kid_subsets, subset_size=kid_subset_size, seed=kid_seed)
        self.kid_normalisation = kid_normalisation
        self.kid_scale = None if acts is None else kid_module.feature_scale(acts["pool"], kid_normalisation)
        self._radii = None
        self._sqrt_sigma = {}
        self._kid_ref_term = None

    @property
    def has_acts(self):
        return self.acts is not None

    @property
    def radii(self):
        """k-NN radii of the reference pool features (computed once)."""
        if self._radii is None:
            self._radii = metrics.manifold_radii(
                self.acts["pool"], self.k, device=self.device, norms=self.norms
            )
        return self._radii

    def sqrt_sigma(self, kind):
        """The symmetric square root of the reference covariance (torch float64), for per-replicate FIDs."""
        torch = _torch()
        if kind not in self._sqrt_sigma:
            sigma = _tensor(self.stats[kind][1], self.device)
            evals, evecs = torch.linalg.eigh((sigma + sigma.T) / 2)
            self._sqrt_sigma[kind] = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
        return self._sqrt_sigma[kind]

    def kid_features(self):
        return _tensor(self.acts["pool"], self.device) / self.kid_scale

    def kid_ref_term(self):
        """mean_{a != b} k(y_a, y_b) over the whole reference."""
        if self._kid_ref_term is None:
            y = self.kid_features()
            total, diag = 0.0, 0.0
            for r0 in range(0, y.shape[0], 4096):
                block = kid_module.polynomial_kernel(y[r0 : r0 + 4096], y)
                total += float(block.sum())
                diag += float(block.diagonal(offset=r0).sum())
            n = y.shape[0]
            self._kid_ref_term = (total - diag) / (n * (n - 1))
        return self._kid_ref_term


# ----------------------------------------------------------------------------------------------------
# point estimates with the evaluator's functions
# ----------------------------------------------------------------------------------------------------


def point_metrics(reference, acts):
    """Every metric of the sample activations ``acts`` against ``reference``, with the evaluator's functions:
    a dict of floats, precision, recall and KID None for a statistics-only reference."""
    out = {"inception_score": metrics.inception_score(acts["probs"])}
    for kind, name in (("pool", "fid"), ("spatial", "sfid")):
        mu, sigma = metrics.statistics(acts[kind])
        r_mu, r_sigma = reference.stats[kind]
        with warnings.catch_warnings():  # small seed sets have singular covariances; FID handles them
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = metrics.frechet_distance(mu, sigma, r_mu, r_sigma)
    if reference.has_acts:
        out["precision"], out["recall"] = metrics.precision_recall(
            reference.acts["pool"], acts["pool"], reference.k, device=reference.device,
            ref_radii=reference.radii, norms=reference.norms,
        )
        out["kid"] = kid_module.kid(
            reference.acts["pool"], acts["pool"], scale=reference.kid_scale, device=reference.device,
            **reference.kid_options,
        )[0]
    else:
        out["precision"] = out["recall"] = out["kid"] = None
    return out


# ----------------------------------------------------------------------------------------------------
# bootstrap replicates
# ----------------------------------------------------------------------------------------------------


def resample_indices(n, n_boot, seed):
    """Yield arrays ``[chunk, n]`` of resampled row indices, ``n_boot`` rows in all, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _ELEMENTS_PER_CHUNK // max(n, 1)))
    for start in range(0, n_boot, chunk):
        yield np.stack([rng.integers(0, n, n) for _ in range(min(chunk, n_boot - start))])


class SampleBootstrap:
    """Bootstrap replicates of every metric of one sample batch against a fixed :class:`Reference`; `store`
    (an `evaluations.replicate_cache.ReplicateStore`, or None) keeps them between runs."""

    def __init__(self, reference, acts, store=None):
        self.reference = reference
        self.acts = acts
        self.store = store
        self.n = int(acts["pool"].shape[0])
        if self.n < 2:
            raise ValueError(f"bootstrap intervals need at least 2 samples; got {self.n}")
        self._cache = {}
        self._prepared = False

    # -- one-off preparation ------------------------------------------------------------------------

    def _prepare(self):
        if self._prepared:
            return
        ref, device = self.reference, self.reference.device
        torch = _torch()
        self._fid = {}
        for kind in ("pool", "spatial"):
            x = _tensor(self.acts[kind], device)
            r_mu, r_sigma = ref.stats[kind]
            self._fid[kind] = dict(
                x=x,
                xa=x @ ref.sqrt_sigma(kind),
                r_mu=_tensor(r_mu, device),
                r_trace=float(np.trace(np.asarray(r_sigma, dtype=np.float64))),
            )
        probs = np.asarray(self.acts["probs"], dtype=np.float64)
        self._probs = probs
        # sum_c p log p per row, with 0 log 0 = 0
        self._negentropy = np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), axis=1)
        self._pairs = None
        if ref.has_acts:
            radii = metrics.manifold_radii(self.acts["pool"], ref.k, device=device, norms=ref.norms)
            smp_in, pairs = metrics.manifold_coverage(
                ref.acts["pool"], ref.radii, self.acts["pool"], radii, device=device, norms=ref.norms
            )
            self._inside = smp_in.astype(np.float64)
            if pairs is None:
                warnings.warn("too many sample-ball / reference pairs: no recall interval", RuntimeWarning)
            else:
                import scipy.sparse

                n_ref = ref.acts["pool"].shape[0]
                self._pairs = scipy.sparse.csr_matrix(
                    (np.ones(len(pairs[0]), np.float32), pairs), shape=(n_ref, self.n)
                )
            x = _tensor(self.acts["pool"], device) / ref.kid_scale
            y = ref.kid_features()
            self._kid_x = x
            self._kid_cross = torch.cat(
                [kid_module.polynomial_kernel(x[r0 : r0 + 4096], y).mean(dim=1) for r0 in range(0, self.n, 4096)]
            )
            self._kid_diag = (((x * x).sum(dim=1) / x.shape[1]) + 1.0) ** 3
        self._prepared = True

    # -- per-replicate metrics ----------------------------------------------------------------------

    def _frechet(self, kind, counts):
        torch = _torch()
        f = self._fid[kind]
        rows = np.flatnonzero(counts)
        w = torch.as_tensor(counts[rows], dtype=torch.float64, device=f["x"].device)
        index = torch.as_tensor(rows, device=f["x"].device)
        x, xa = f["x"][index], f["xa"][index]
        n = float(counts.sum())
        mu = (w @ x) / n
        centred = x - mu
        trace_sigma = float((w * (centred * centred).sum(dim=1)).sum()) / (n - 1)
        y = w.sqrt()[:, None] * (xa - (w @ xa) / n)  # A S A = y^T y / (n - 1), A = sqrt(reference sigma)
        gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
        evals = torch.linalg.eigvalsh(gram / (n - 1))
        trace_sqrt = float(evals.clamp_min(0).sqrt().sum())
        diff = mu - f["r_mu"]
        return float(diff @ diff) + trace_sigma + f["r_trace"] - 2 * trace_sqrt

    def _inception_score(self, index, split_size=5000):
        scores = []
        for start in range(0, len(index), split_size):
            part = index[start : start + split_size]
            counts = np.bincount(part, minlength=self.n).astype(np.float64)
            marginal = counts @ self._probs / len(part)
            log_marginal = np.log(np.where(marginal > 0, marginal, 1))
            scores.append(np.exp(counts @ self._negentropy / len(part) - marginal @ log_marginal))
        return float(np.mean(scores))

    def _kid(self, counts):
        """Unbiased MMD^2 of each resample (rows of ``counts``) against the whole reference."""
        torch = _torch()
        x = self._kid_x
        w = torch.as_tensor(counts, dtype=torch.float64, device=x.device)
        quad = torch.zeros(w.shape[0], dtype=torch.float64, device=x.device)
        for r0 in range(0, self.n, 2048):
            block = kid_module.polynomial_kernel(x[r0 : r0 + 2048], x)
            quad += ((w[:, r0 : r0 + 2048] @ block) * w).sum(dim=1)
        n = w.sum(dim=1)  # rows in each resample (or seed set)
        sample_term = (quad - w @ self._kid_diag) / (n * (n - 1))
        cross = (w @ self._kid_cross) / n
        return (sample_term + self.reference.kid_ref_term() - 2 * cross).cpu().numpy()

    def replicate_metrics(self, index):
        """Every metric for each resample ``index[b]`` (rows of sample indices, ``[B, n]``)."""
        self._prepare()
        with _few_threads_for_small_matrices(self.reference.device, max(self.acts[k].shape[1] for k in self._fid)):
            return self._replicate_metrics(index)

    def _replicate_metrics(self, index):
        index = np.atleast_2d(np.asarray(index, dtype=np.int64))
        counts = np.stack([np.bincount(row, minlength=self.n) for row in index])
        out = {
            "fid": np.array([self._frechet("pool", c) for c in counts]),
            "sfid": np.array([self._frechet("spatial", c) for c in counts]),
            "inception_score": np.array([self._inception_score(row) for row in index]),
        }
        if self.reference.has_acts:
            out["precision"] = counts @ self._inside / counts.sum(axis=1)
            if self._pairs is not None:
                drawn = (counts > 0).T.astype(np.float32)
                covered = np.asarray(self._pairs @ drawn) > 0
                out["recall"] = covered.mean(axis=0)
            out["kid"] = self._kid(counts)
        return out

    def seed_set_metrics(self, count):
        """The metrics of each of ``count`` seed sets, i.e. of that set's images against the whole reference
        (cached: a baseline is compared many times).  FID, sFID, IS and precision are the evaluator's
        numbers (up to float64 rounding); recall recomputes the k-NN radii within the set; KID is the full
        unbiased estimate against the whole reference (what the subset average estimates)."""
        key = ("sets", int(count))
        if key not in self._cache:
            self._prepare()
            values = []
            with _few_threads_for_small_matrices(self.reference.device, max(self.acts[k].shape[1] for k in self._fid)):
                for rows in seed_sets(self.n, count):
                    one = {name: float(v[0]) for name, v in self._replicate_metrics(rows[None]).items()}
                    if self.reference.has_acts:
                        one["precision"], one["recall"] = metrics.precision_recall(
                            self.reference.acts["pool"], self.acts["pool"][rows], self.reference.k,
                            device=self.reference.device, ref_radii=self.reference.radii, norms=self.reference.norms,
                        )
                    values.append(one)
            self._cache[key] = values
        return self._cache[key]

    def replicates(self, n_boot=DEFAULT_BOOTSTRAP, seed=0):
        """``n_boot`` replicates of every available metric (cached per ``(n_boot, seed)``)."""
        if n_boot < 2:
            raise ValueError(f"a bootstrap needs at least 2 replicates; got {n_boot}")
        key = (int(n_boot), int(seed))
        if key not in self._cache and self.store is not None and (stored := self.store.load(*key)) is not None:
            self._cache[key] = stored
        if key not in self._cache:
            parts = [self.replicate_metrics(index) for index in resample_indices(self.n, n_boot, seed)]
            self._cache[key] = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            if self.store is not None:
                self.store.save(*key, self._cache[key])
        return self._cache[key]


# ----------------------------------------------------------------------------------------------------
# intervals
# ----------------------------------------------------------------------------------------------------


def bootstrap_interval(estimate, replicates, level=DEFAULT_LEVEL, recentre=True):
    """The ``level`` percentile interval of ``replicates``; with ``recentre``, shifted by their bias
    (``estimate - mean(replicates)``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1; got {level}")
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if estimate is None or len(reps) < 2:
        return None
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    shift = float(estimate) - float(reps.mean()) if recentre else 0.0
    return [float(low + shift), float(high + shift)]


def intervals(estimates, replicates, level=DEFAULT_LEVEL):
    """``{metric: [low, high]}`` for every metric with both an estimate and replicates (a re-centred bound
    that leaves the metric's range, e.g. recall above 1, is clipped to it)."""
    out = {}
    for name in DIRECTIONS:
        if name in replicates and estimates.get(name) is not None:
            interval = bootstrap_interval(estimates[name], replicates[name], level, name in RECENTRED)
            if interval is not None:
                low, high = RANGES.get(name, (-np.inf, np.inf))
                interval = [float(np.clip(v, low, high)) for v in interval]
            out[name] = interval
    return out


def bootstrap_description(n_boot, seed, level=DEFAULT_LEVEL):
    """What the intervals are, for the JSON output."""
    return {
        "replicates": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        "resampled": "the sample batch's rows, with replacement; the reference is held fixed",
        "interval": "percentile interval of the replicates; shifted by their bias (centred on the estimate) "
        f"for {', '.join(RECENTRED)}",
    }


# ----------------------------------------------------------------------------------------------------
# paired comparison
# ----------------------------------------------------------------------------------------------------


def seed_sets(n, count):
    """``count`` disjoint sets of consecutive indices covering ``0 .. n - 1`` (sizes differ by at most 1)."""
    if count < 1:
        raise ValueError(f"the number of seed sets must be at least 1; got {count}")
    return np.array_split(np.arange(n), count)


def check_seed_sets(n, count, need, k=3):
    """Raise ``ValueError`` unless ``count`` seed sets of ``n`` images each hold ``need`` images."""
    smallest = min(len(s) for s in seed_sets(n, count))
    if smallest < need:
        raise ValueError(
            f"{n} images cut into {count} seed sets leaves sets of {smallest}, but each needs at least {need} "
            f"(precision/recall with k={k}); use fewer seed sets"
        )


def _better(name, difference):
    """+1 when a difference ``B - A`` favours B, -1 when it favours A, 0 for a tie."""
    if difference == 0:
        return 0
    return 1 if (difference < 0) == (DIRECTIONS[name] == "lower") else -1


def compare(
    a,
    b,
    *,
    n_boot=DEFAULT_BOOTSTRAP,
    seed=0,
    num_seed_sets=DEFAULT_SEED_SETS,
    level=DEFAULT_LEVEL,
    a_metrics=None,
    b_metrics=None,
):
    """Batch B against batch A (same seeds, same reference): ``B - A`` per metric with a paired interval,
    per-seed-set differences and how many sets each side wins.

    ``a_metrics`` / ``b_metrics``: the batches' point estimates if already computed (else computed here).
    """
    if a.reference is not b.reference:
        raise ValueError("both batches must be compared against the same Reference object")
    if a.n != b.n:
        raise ValueError(
            f"the batches hold {a.n} and {b.n} images: a paired comparison needs the same seeds (image "
            "indices) in both; sample both with the same --num_samples and --seed"
        )
    reference = a.reference
    check_seed_sets(a.n, num_seed_sets, max(reference.k + 1, 2) if reference.has_acts else 2, reference.k)
    est_a = a_metrics if a_metrics is not None else point_metrics(reference, a.acts)
    est_b = b_metrics if b_metrics is not None else point_metrics(reference, b.acts)
    rep_a, rep_b = a.replicates(n_boot, seed), b.replicates(n_boot, seed)
    names = [m for m in DIRECTIONS if m in rep_a and m in rep_b and est_a.get(m) is not None]
    difference = {m: float(est_b[m]) - float(est_a[m]) for m in names}
    per_set = {m: [] for m in names}
    for set_a, set_b in zip(a.seed_set_metrics(num_seed_sets), b.seed_set_metrics(num_seed_sets)):
        for m in names:
            per_set[m].append(float(set_b[m]) - float(set_a[m]))
    wins = {
        m: {
            "b_better": sum(_better(m, d) > 0 for d in per_set[m]),
            "a_better": sum(_better(m, d) < 0 for d in per_set[m]),
            "ties": sum(_better(m, d) == 0 for d in per_set[m]),
        }
        for m in names
    }
    return {
        "a": {**est_a, "intervals": intervals(est_a, rep_a, level)},
        "b": {**est_b, "intervals": intervals(est_b, rep_b, level)},
        "difference": difference,
        "difference_intervals": {
            m: bootstrap_interval(difference[m], rep_b[m] - rep_a[m], level, m in RECENTRED) for m in names
        },
        "seed_sets": {
            "count": num_seed_sets,
            "sizes": [len(s) for s in seed_sets(a.n, num_seed_sets)],
            "split": "consecutive image indices",
            "difference": per_set,
            "wins": wins,
        },
        "directions": {m: DIRECTIONS[m] for m in names},
        "bootstrap": {**bootstrap_description(n_boot, seed, level), "paired": "the same resampled indices for A and B"},
    }


# ----------------------------------------------------------------------------------------------------
# are two batch files made from the same seeds?
# ----------------------------------------------------------------------------------------------------


def _manifest_sampling(path):
    """The sampling config (a dict) of the manifest beside batch `path`, or None where there is none."""
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text())["config"]["sampling"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unchecked_seeds_note(path_a, path_b):
    """A one-line note naming the batches whose sampling seed is not recorded (no readable ``manifest.json``
    with a seed beside them), so that their being made from the same seeds cannot be checked; else None."""
    sampling = {p: _manifest_sampling(Path(p)) for p in (path_a, path_b)}
    unchecked = [str(p) for p, s in sampling.items() if not isinstance(s, dict) or s.get("seed") is None]
    if not unchecked:
        return None
    return (f"Note: the seeds could not be checked: no manifest.json recording the sampling --seed beside "
            f"{' or '.join(unchecked)}; the pairing assumes both batches were sampled with the same --seed "
            "and --num_samples.")


def check_paired_batches(path_a, path_b):
    """Raise ``ValueError`` unless the two ``.npz`` batches can hold the same image indices; return the count.

    Checked: the image count; the ``indices`` arrays and the ``arr_1`` labels when both files have them;
    the seed and count in the sampling runs' ``manifest.json`` when both folders have one.
    """
    path_a, path_b = Path(path_a), Path(path_b)
    info = {}
    for path in (path_a, path_b):
        if not path.is_file():
            raise FileNotFoundError(f"sample batch {path} does not exist")
        with np.load(path, mmap_mode="r", allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{path} has no images ('arr_0'); found {', '.join(data.files) or 'nothing'}")
            info[path] = {
                "count": inspect_npz(path).num_images,
                "indices": data["indices"] if "indices" in data.files else None,
                "labels": data["arr_1"] if "arr_1" in data.files else None,
            }
    ia, ib = info[path_a], info[path_b]
    if ia["count"] != ib["count"]:
        raise ValueError(
            f"{path_a} holds {ia['count']} images and {path_b} {ib['count']}: a paired comparison needs the "
            "same seeds (image indices) in both; sample both with the same --num_samples and --seed"
        )
    for key, what in (("indices", "image indices"), ("labels", "class labels (arr_1)")):
        if ia[key] is not None and ib[key] is not None and not np.array_equal(ia[key], ib[key]):
            raise ValueError(
                f"{path_a} and {path_b} have different {what}: they were not made from the same seeds"
            )
    sa, sb = _manifest_sampling(path_a), _manifest_sampling(path_b)
    if sa is not None and sb is not None:
        for key in ("seed", "num_samples"):
            if sa.get(key) != sb.get(key):
                raise ValueError(
                    f"the runs of {path_a} and {path_b} used different --{key} ({sa.get(key)} vs {sb.get(key)}), "
                    "so image i is not from the same noise in both; sample both with the same --seed"
                )
    return int(ia["count"])

"""The one scorer: sample batches against one reference batch, with bootstrap intervals and paired comparisons.

Every caller scores through it: ``adm-evaluate`` (and so the sweeps, which run that command for each point
and each comparison), :meth:`Evaluator.evaluate`, the CPU demo and ``pag-checkpoint-quality``.

    scorer = Scorer(Evaluator("digits", progress=False), "heldout.npz", intervals=1000)
    scorer.score("unguided.npz")          # {"fid", "sfid", "inception_score", "precision", "recall", "kid",
                                          #  "intervals": {metric: [low, high]}}
    scorer.compare("unguided.npz", "pag.npz")   # B - A on the same seeds, paired intervals, seed-set wins
    scorer.features("pag.npz").acts["probs"]    # the feature network's view of the batch

The `Evaluator` says how images become features and features become metrics (the ADM evaluator's
numbers); the scorer binds it to a reference. Every batch is checked against the reference (image layout,
count, resolution, stored statistics) before any feature is computed, and read through (its zip CRC)
before the reference is featurised, so a damaged batch fails in the time of one read. The reference is
featurised once per scorer, each batch once while its file is unchanged.
"""

from pathlib import Path

from guided_diffusion.runtime.files import file_fingerprint

from . import bootstrap
from .activation_cache import BatchFeatures
from .npz import IMAGES_KEY, check_member_intact, inspect_npz, read_npz_statistics, validate_image_header
from .replicate_cache import ReplicateStore
from .resolution import sample_resize_target

__all__ = ["Scorer"]


class _Batch:
    """A scored batch: its file, its features, its point metrics and (made when first needed) its bootstrap."""

    def __init__(self, path, resize_to, features, metrics):
        self.path, self.resize_to = path, resize_to
        self.features, self.metrics, self.bootstrap = features, metrics, None


class Scorer:
    """Scores sample batches against the reference batch at `reference` with `evaluator` (an `Evaluator`).

    `intervals`: bootstrap resamples of each batch for 95% intervals (0: none; a comparison needs at least
    2), drawn with `bootstrap_seed`; `seed_sets`: the disjoint sets of consecutive image indices a
    comparison also reports; `level`: the intervals' coverage; `bootstrap_cache`: a folder where each batch's
    replicates are kept and reused (`evaluations.replicate_cache`), or None. The features of every batch scored stay in
    memory while the scorer lives (a comparison reuses them): one scorer per run of a few batches.
    """

    def __init__(self, evaluator, reference, *, intervals=0, bootstrap_seed=0,
                 seed_sets=bootstrap.DEFAULT_SEED_SETS, level=bootstrap.DEFAULT_LEVEL, bootstrap_cache=None):
        if intervals < 0 or intervals == 1:
            raise ValueError(f"intervals must be 0 (none) or at least 2 resamples (1000 is usual); got {intervals}")
        if seed_sets < 1:
            raise ValueError(f"seed_sets must be at least 1; got {seed_sets}")
        self.evaluator = evaluator
        self.reference_path = Path(reference)
        self.intervals, self.bootstrap_seed, self.seed_sets, self.level = intervals, bootstrap_seed, seed_sets, level
        self.bootstrap_cache = bootstrap_cache
        self._ref_info = self._ref = self._prepared = None
        self._batches = {}  # (path, file fingerprint) -> _Batch

    def score(self, path):
        """The batch's metrics against the reference; with `intervals`, also ``"intervals"``: {metric: [low,
        high]} from resampling the batch (the reference held fixed)."""
        (batch,) = self._load([path])
        metrics = dict(batch.metrics)
        if self.intervals:
            replicates = self._bootstrap(batch).replicates(self.intervals, self.bootstrap_seed)
            metrics["intervals"] = bootstrap.intervals(metrics, replicates, self.level)
        return metrics

    def compare(self, a, b):
        """Batch `b` against batch `a`, both sampled from the same seeds: see `evaluations.bootstrap.compare`."""
        if self.intervals < 2:
            raise ValueError("a paired comparison needs bootstrap resamples: make the Scorer with intervals >= 2")
        count = bootstrap.check_paired_batches(a, b)
        k = self.evaluator.k
        bootstrap.check_seed_sets(count, self.seed_sets, max(k + 1, 2), k)  # before any features
        batch_a, batch_b = self._load([a, b])
        return bootstrap.compare(
            self._bootstrap(batch_a), self._bootstrap(batch_b), n_boot=self.intervals, seed=self.bootstrap_seed,
            num_seed_sets=self.seed_sets, level=self.level, a_metrics=dict(batch_a.metrics),
            b_metrics=dict(batch_b.metrics),
        )

    def features(self, path):
        """The batch's activations and statistics (`BatchFeatures`), checked against the reference."""
        return self._load([path])[0].features

    # -- loading --------------------------------------------------------------------------------

    def _bootstrap(self, batch):
        if batch.bootstrap is None:
            if self._prepared is None:
                self._prepared = self.evaluator.reference(self._ref)
            store = None
            if self.bootstrap_cache is not None:
                settings = {**self.evaluator.metric_settings(), "resize_to": batch.resize_to}
                store = ReplicateStore(self.bootstrap_cache, batch.path, self.reference_path,
                                       self.evaluator.backend_name, settings)
            batch.bootstrap = bootstrap.SampleBootstrap(self._prepared, batch.features.acts, store)
        return batch.bootstrap

    def _load(self, paths):
        """The scored batches at `paths`: each checked, then each one not yet featurised read through, then the
        reference featurised (once), then the batches."""
        if self._ref_info is None:
            self._ref_info = inspect_npz(self.reference_path)
        keys = [(Path(p), _fingerprint(p)) for p in paths]
        todo = {key: inspect_npz(key[0]) for key in keys if key not in self._batches}
        resize = {}
        for key, info in todo.items():
            self._check_inputs(info)
            resize[key] = sample_resize_target(self._ref_info, info, self.evaluator.resize)
        cached = {key: self.evaluator.cached_features(key[0], resize[key]) for key in todo}
        for key, feats in cached.items():
            if feats is None:
                check_member_intact(key[0], IMAGES_KEY)
        if self._ref is None:
            self._ref = self._with_stored_statistics(self._ref_info)
        for key, info in todo.items():
            feats = self._with_stored_statistics(info, resize[key], cached[key])
            metrics = self.evaluator.compute_metrics(self._ref, feats, ref_name=str(self.reference_path))
            resize_to = None if resize[key] is None else [int(v) for v in resize[key]]
            self._batches[key] = _Batch(key[0], resize_to, feats, metrics)
        return [self._batches[key] for key in keys]

    def _with_stored_statistics(self, info, resize_to=None, feats=None):
        """`feats` (already read from the cache), else the batch's features; stored statistics override."""
        if feats is None:
            feats = self.evaluator.batch_features(info.path, resize_to) if info.has_images else BatchFeatures()
        # As in the ADM evaluator, statistics stored in the .npz take precedence over the activations.
        for kind in ("pool", "spatial"):
            stored = read_npz_statistics(info.path, kind)
            if stored is not None:
                feats.stats[kind] = stored
        return feats

    def _check_inputs(self, sample):
        ref, k = self._ref_info, self.evaluator.k
        need = max(k + 1, 2)
        validate_image_header(sample, min_images=1)
        if sample.num_images < need:
            raise ValueError(
                f"{sample.path} holds {sample.num_images} images, but precision/recall with k={k} "
                f"needs at least {k + 1} (and a covariance at least 2); evaluate more samples."
            )
        if ref.has_images:
            validate_image_header(ref, min_images=1)
            if ref.num_images < need:
                raise ValueError(
                    f"{ref.path} holds {ref.num_images} reference images, but precision/recall with "
                    f"k={k} needs at least {k + 1}."
                )
        elif not (ref.has_statistics("pool") and ref.has_statistics("spatial")):
            found = ", ".join(ref.keys) or "nothing"
            raise ValueError(
                f"reference batch {ref.path} has neither images ('{IMAGES_KEY}') nor precomputed "
                f"statistics ('mu', 'sigma', 'mu_s', 'sigma_s'); found: {found}. Use an ADM reference "
                "batch such as VIRTUAL_imagenet256_labeled.npz, or save reference images as arr_0."
            )
        for info in (ref, sample):  # read (and so validate: pairs, shapes, finite values) stored statistics
            for kind in ("pool", "spatial"):
                read_npz_statistics(info.path, kind)


def _fingerprint(path):
    """The file's fingerprint, so that a batch rewritten in place is featurised again; a missing file is
    left to the checks that name it."""
    try:
        return tuple(sorted(file_fingerprint(path).items()))
    except OSError:
        return None

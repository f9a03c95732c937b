"""ADM evaluator (Inception Score, FID, sFID, improved precision/recall, KID) for today's numpy/scipy/TF 2.

* :mod:`evaluations.metrics` - the metrics on activation arrays (no TensorFlow needed): FID, sFID and IS
  here, precision/recall from :mod:`evaluations.manifolds` (float16 norms: :mod:`evaluations.fp16_norms`);
* :mod:`evaluations.backends` - the feature-backend interface and registry (base class:
  :mod:`evaluations.backend_base`);
* :mod:`evaluations.inception` - the ADM reference Inception graph backend (TensorFlow);
* :mod:`evaluations.evaluator` - :class:`Evaluator` and the ``adm-evaluate`` command line;
* :mod:`evaluations.scoring` - :class:`Scorer`, the one way every caller scores sample batches against a
  reference: metrics, bootstrap intervals and paired comparisons;
* :mod:`evaluations.npz` - streaming reader for ``.npz`` image batches;
* :mod:`evaluations.activation_cache` - per-batch activations cached in a user cache folder, never beside
  the batches (``--cache_dir``, ``$PAG_EVAL_CACHE``, default ``~/.cache/pag_adm/activations``);
* :mod:`evaluations.resolution` - refuses a sample resolution other than the reference's (or resizes);
* :mod:`evaluations.kid` - KID (unbiased MMD^2, cubic kernel, subset average) and its feature scaling;
* :mod:`evaluations.bootstrap` - bootstrap intervals and seed-paired comparisons of sample batches;
* :mod:`evaluations.tables` - Markdown tables of values with intervals and of paired differences;
* :mod:`evaluations.download_inception` - fetches the Inception graph, only when asked.
"""

from .backends import (
    FeatureBackend,
    available_backends,
    create_backend,
    register_backend,
)
from .metrics import (
    fp16_squared_norms,
    frechet_distance,
    inception_score,
    manifold_membership,
    manifold_radii,
    precision_recall,
    statistics,
)


def __getattr__(name):
    # Imported lazily so that `python -m evaluations.evaluator` does not find the module pre-imported.
    if name in ("BatchFeatures", "Evaluator", "Scorer", "cache_path_for"):
        from . import evaluator

        return getattr(evaluator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchFeatures",
    "Evaluator",
    "FeatureBackend",
    "Scorer",
    "available_backends",
    "cache_path_for",
    "create_backend",
    "fp16_squared_norms",
    "frechet_distance",
    "inception_score",
    "manifold_membership",
    "manifold_radii",
    "precision_recall",
    "register_backend",
    "statistics",
]

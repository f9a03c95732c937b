"""Sample-quality metrics of the ADM evaluator, computed from feature activations.

Everything here works on plain arrays of activations (``[N, D]``); turning images into activations is
the job of a feature backend (see :mod:`evaluations.backends`).

The numbers follow OpenAI's ADM evaluator (``guided-diffusion/evaluations/evaluator.py``):

* FID / sFID statistics: ``mu`` is the float32 mean of the float32 activations, ``sigma`` the float64
  ``np.cov(rowvar=False)``; the distance uses the trace of ``scipy.linalg.sqrtm``.
* Inception Score: the improved-GAN formula over splits of ``split_size`` rows.
* Improved precision / recall (Kynkaanniemi et al. 2019) with the k-th nearest-neighbour radius,
  counting each point itself (distance 0) as a neighbour.  The reference computes the pairwise squared
  distances with TensorFlow in float16 (squared norms, matmul and the combination all rounded to float16)
  and recomputes a ``row_batch_size x col_batch_size`` block in float32 only when a float16 value in it is
  not finite.  We do the same with torch, on the GPU when there is one, in chunks of bounded size.
"""

import warnings

import numpy as np
import scipy.linalg

# Precision / recall and their float16 norms live in their own modules; re-exported here so that
# `metrics` stays the one place to import every metric from.
from .fp16_norms import NORM_MODES, fp16_squared_norms
from .manifolds import manifold_coverage, manifold_membership, manifold_radii, precision_recall

__all__ = [
    "statistics",
    "frechet_distance",
    "inception_score",
    "manifold_radii",
    "manifold_membership",
    "manifold_coverage",
    "precision_recall",
    "fp16_squared_norms",
    "NORM_MODES",
]


# ----------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------


def _as_numpy(x):
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def statistics(acts):
    """Mean and covariance of activations ``[N, D]``, exactly as the ADM evaluator makes them.

    ``mu`` is the float32 mean of the float32 activations; ``sigma`` is ``np.cov(rowvar=False)`` (float64).
    """
    acts = _as_numpy(acts)
    if acts.ndim != 2:
        raise ValueError(f"activations must be a 2-D array [N, D]; got shape {acts.shape}")
    if acts.shape[0] < 2:
        raise ValueError(
            f"need at least 2 activation rows to estimate a covariance; got {acts.shape[0]}"
        )
    acts = acts.astype(np.float32, copy=False)
    mu = np.mean(acts, axis=0)
    sigma = np.cov(acts, rowvar=False)
    return mu, sigma


def _sqrtm(mat):
    # scipy warns (LinAlgWarning) for the singular products that FID routinely meets (N < D); the
    # finiteness / imaginary-part checks below are what decide whether the result is usable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(mat)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 @ sigma2))``.  The ADM evaluator
    calls it as ``sample.frechet_distance(ref)``, i.e. with the sample statistics first.

    When ``sqrtm`` of the product is not finite, ``eps * I`` is added to both covariances and the square
    root is taken again (with a warning).  A complex result is accepted, and its real part used, only when
    the imaginary part of its diagonal is below 1e-3; otherwise ``ValueError`` is raised.
    """
    mu1 = np.atleast_1d(_as_numpy(mu1))
    mu2 = np.atleast_1d(_as_numpy(mu2))
    sigma1 = np.atleast_2d(_as_numpy(sigma1))
    sigma2 = np.atleast_2d(_as_numpy(sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different shapes: {sigma1.shape} vs {sigma2.shape}")
    if sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"covariance shape {sigma1.shape} does not match the mean's dimension {mu1.shape[0]}"
        )

    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: the product of the covariances is singular; adding {eps} to their diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))

    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                "FID: sqrtm(sigma1 @ sigma2) has a large imaginary component "
                f"({np.max(np.abs(covmean.imag)):.3g}); the statistics are probably broken"
            )
        covmean = covmean.real

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------------


def inception_score(probs, split_size=5000):
    """Inception Score of class probabilities ``[N, C]`` (rows are softmax outputs).

    The rows are cut into consecutive splits of ``split_size``; each split scores
    ``exp(mean_i KL(p_i || mean_j p_j))`` and the result is the mean over splits (the ADM evaluator's
    formula, computed in the dtype of ``probs``).
    """
    probs = _as_numpy(probs)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty 2-D array [N, C]; got {probs.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be positive; got {split_size}")
    per_split = []
    for start in range(0, probs.shape[0], split_size):
        p = probs[start : start + split_size]
        log_marginal = np.log(np.mean(p, axis=0, keepdims=True))
        kl_rows = np.sum(p * (np.log(p) - log_marginal), axis=1)
        per_split.append(np.exp(np.mean(kl_rows)))
    return float(np.mean(per_split))

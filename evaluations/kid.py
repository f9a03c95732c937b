"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

    k(x, y) = (x . y / d + 1) ** 3                          (d: feature dimension)

    MMD^2_u(X, Y) = mean_{i != j} k(x_i, x_j) + mean_{a != b} k(y_a, y_b) - 2 mean_{i, a} k(x_i, y_a)

KID is that estimate averaged over ``subsets`` random pairs of subsets of ``m = min(subset_size, n_X, n_Y)``
rows, drawn without replacement from each set, as torch-fidelity computes it (100 subsets of 1000 by
default). When both sets have at most ``subset_size`` rows and the same count, every subset is a whole set
and KID is the full-set estimate exactly.

Feature scale: the kernel was designed for Inception pool features, whose entries are of order one.  On
features where ``x . x / d`` is much larger (17.7 for the digits network) the ``+ 1`` is negligible, the
kernel is a pure cubic dominated by the largest-norm points, and the estimate drowns in its own variance.
``normalisation="reference_rms"`` therefore divides every feature vector (reference and sample alike) by the
reference's RMS scale ``sqrt(mean_i |y_i|^2 / d)``, so that the reference's mean ``x . x / d`` is 1.  The
scale depends on the reference alone, so KIDs against one reference stay comparable.  ``"none"`` keeps the
published kernel (use it for Inception features, to compare with torch-fidelity and papers).
"""


import numpy as np

NORMALISATIONS = ("none", "reference_rms")
DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000
DEFAULT_SEED = 0

__all__ = [
    "NORMALISATIONS",
    "DEFAULT_SUBSETS",
    "DEFAULT_SUBSET_SIZE",
    "feature_scale",
    "default_normalisation",
    "polynomial_kernel",
    "mmd2_unbiased",
    "kid",
]


def _torch():
    import torch

    return torch


def _as_tensor(x, device):
    torch = _torch()
    if hasattr(x, "detach"):
        return x.detach().to(device=device, dtype=torch.float64)
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D]; got shape {arr.shape}")
    return torch.from_numpy(arr).to(device)


def default_normalisation(backend_name):
    """The published kernel for Inception (comparable with torch-fidelity), reference RMS scaling otherwise."""
    return "none" if backend_name == "inception" else "reference_rms"


def feature_scale(ref_feats, normalisation):
    """The number every feature vector is divided by before the kernel is applied."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown KID normalisation {normalisation!r}; use one of {', '.join(NORMALISATIONS)}")
    if normalisation == "none":
        return 1.0
    ref = np.asarray(ref_feats, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.sum(ref * ref, axis=1)) / ref.shape[1]))
    if not rms > 0:
        raise ValueError("the reference features are all zero: KID's reference_rms normalisation needs a scale")
    return rms


def polynomial_kernel(x, y):
    """``(x . y / d + 1) ** 3`` for every row pair of ``x [N, d]`` and ``y [M, d]`` (torch float64)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _offdiag_mean(k):
    n = k.shape[0]
    return float((k.sum() - k.diagonal().sum()) / (n * (n - 1)))


def mmd2_unbiased(x, y, *, device="cpu"):
    """The unbiased MMD^2 estimate between the rows of ``x`` and ``y`` (each at least 2 rows)."""
    x, y = _as_tensor(x, device), _as_tensor(y, device)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"MMD^2 needs at least 2 rows per set; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    cross = float(polynomial_kernel(x, y).mean())
    return _offdiag_mean(polynomial_kernel(x, x)) + _offdiag_mean(polynomial_kernel(y, y)) - 2 * cross


def kid(
    ref_feats,
    sample_feats,
    *,
    normalisation="none",
    subsets=DEFAULT_SUBSETS,
    subset_size=DEFAULT_SUBSET_SIZE,
    seed=DEFAULT_SEED,
    device=None,
    scale=None,
):
    """KID of ``sample_feats`` against ``ref_feats``: (mean, standard deviation) over the subsets.

    ``scale`` overrides the one ``normalisation`` derives from the reference.  Subsets come from
    ``numpy.random.default_rng(seed)``: the same inputs always give the same number.
    """
    torch = _torch()
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs subsets >= 1 and subset_size >= 2; got {subsets} and {subset_size}")
    device = torch.device(device or "cpu")
    if scale is None:
        scale = feature_scale(ref_feats, normalisation)
    y = _as_tensor(ref_feats, device) / scale
    x = _as_tensor(sample_feats, device) / scale
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"reference and sample features differ in dimension: {y.shape[1]} vs {x.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 rows in each set; got {x.shape[0]} samples, {y.shape[0]} reference")
    if m == x.shape[0] == y.shape[0]:  # every subset is a whole set: one evaluation gives them all
        return mmd2_unbiased(x, y, device=device), 0.0
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        xs = x[torch.from_numpy(rng.choice(x.shape[0], m, replace=False)).to(device)]
        ys = y[torch.from_numpy(rng.choice(y.shape[0], m, replace=False)).to(device)]
        values[s] = mmd2_unbiased(xs, ys, device=device)
    return float(values.mean()), float(values.std())

"""KID: the unbiased MMD^2 with the cubic kernel, its subset average and its feature normalisation."""

import numpy as np
import pytest

from evaluations import kid as K


def test_hand_computed_case_is_exact():
    # d = 1, so k(a, b) = (a b + 1)^3.  X = {0, 1, 2}, Y = {1, 2, 3}:
    #   X pairs: (0,1) 1, (0,2) 1, (1,2) 27            -> mean over ordered pairs 2 * 29 / 6
    #   Y pairs: (1,2) 27, (1,3) 64, (2,3) 343          -> 2 * 434 / 6
    #   cross:   x=0: 1+1+1, x=1: 8+27+64, x=2: 27+125+343 = 597  -> 597 / 9
    # MMD^2_u = 58/6 + 868/6 - 2 * 597/9 = 65/3
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [2.0], [3.0]])
    assert K.mmd2_unbiased(x, y) == pytest.approx(65 / 3, abs=1e-12)
    # sets no larger than a subset: every subset is the whole set, so KID is that number, for any seed
    for seed in (0, 7):
        value, spread = K.kid(y, x, normalisation="none", subset_size=1000, seed=seed)
        assert value == pytest.approx(65 / 3, abs=1e-12) and spread == 0.0


def test_identical_sets_give_the_closed_form_of_the_unbiased_estimate():
    # With X = Y the estimate is (2 / n) (mean off-diagonal k - mean diagonal k): O(1/n), not exactly 0.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    k = (x @ x.T / 8 + 1) ** 3
    off = (k.sum() - np.trace(k)) / (50 * 49)
    expected = 2 / 50 * (off - np.trace(k) / 50)
    assert K.mmd2_unbiased(x, x) == pytest.approx(expected, rel=1e-10)
    assert abs(expected) < 0.2 * K.mmd2_unbiased(x + 1.0, x)  # small next to a real shift


def test_subset_average_converges_to_the_full_estimate():
    rng = np.random.default_rng(1)
    ref, sample = rng.normal(size=(120, 6)), rng.normal(0.4, 1.0, size=(100, 6))
    full = K.mmd2_unbiased(sample, ref)
    value, spread = K.kid(ref, sample, subsets=3000, subset_size=40, seed=3)
    assert spread > 0  # subsets of 40 really differ
    assert value == pytest.approx(full, abs=4 * spread / np.sqrt(3000))
    assert K.kid(ref, sample, subsets=20, subset_size=40, seed=3) == K.kid(ref, sample, subsets=20, subset_size=40,
                                                                             seed=3)


def test_reference_rms_normalisation_is_scale_free_and_defined_by_the_reference():
    rng = np.random.default_rng(2)
    ref, sample = rng.normal(size=(60, 10)) + 3, rng.normal(size=(60, 10)) + 3.3
    scale = K.feature_scale(ref, "reference_rms")
    assert np.mean(np.sum((ref / scale) ** 2, axis=1)) / 10 == pytest.approx(1.0)
    base = K.kid(ref, sample, normalisation="reference_rms")[0]
    assert base == pytest.approx(K.kid(ref / scale, sample / scale, normalisation="none")[0], rel=1e-10)
    for c in (0.01, 7.0):  # multiplying every feature by c changes nothing
        assert K.kid(c * ref, c * sample, normalisation="reference_rms")[0] == pytest.approx(base, rel=1e-9)
    # the published kernel is not scale-free: that is why features of another scale need the normalisation
    assert K.kid(7 * ref, 7 * sample, normalisation="none")[0] != pytest.approx(K.kid(ref, sample)[0], rel=0.1)
    assert K.default_normalisation("inception") == "none"
    assert K.default_normalisation("digits") == "reference_rms"


def test_bad_arguments_are_named():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="unknown KID normalisation"):
        K.kid(x + 1, x, normalisation="l2")
    with pytest.raises(ValueError, match="all zero"):
        K.feature_scale(x, "reference_rms")
    with pytest.raises(ValueError, match="at least 2 rows"):
        K.kid(np.ones((5, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="dimension"):
        K.kid(np.ones((5, 3)), np.ones((5, 4)))

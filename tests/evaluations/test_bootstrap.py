"""Bootstrap intervals and seed-paired comparisons (evaluations.bootstrap), and their evaluator flags."""

import json
import warnings

import numpy as np
import pytest

from evaluations import bootstrap as B
from evaluations import kid as K
from evaluations import metrics
from evaluations.tables import differences_table, excludes_zero

DIM_POOL, DIM_SPATIAL, CLASSES = 12, 16, 6


def _acts(rng, n, shift=0.0):
    logits = rng.normal(size=(n, CLASSES)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {
        "pool": (rng.normal(size=(n, DIM_POOL)) + shift).astype(np.float32),
        "spatial": (rng.normal(size=(n, DIM_SPATIAL)) + shift).astype(np.float32),
        "probs": probs.astype(np.float32),
    }


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    ref = B.Reference(_acts(rng, 150), k=3, device="cpu", kid_normalisation="reference_rms")
    return rng, ref


def test_replicates_equal_the_metrics_of_the_resampled_batch(setting):
    """The fast per-replicate paths give what the evaluator's functions give on the resampled rows."""
    rng, ref = setting
    acts = _acts(rng, 80, shift=0.2)
    boot = B.SampleBootstrap(ref, acts)
    index = np.stack([np.arange(80), rng.integers(0, 80, 80), rng.integers(0, 80, 80)])
    got = boot.replicate_metrics(index)
    radii = metrics.manifold_radii(acts["pool"], 3, device="cpu")
    for b, rows in enumerate(index):
        sub = {k: v[rows] for k, v in acts.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for kind, name in (("pool", "fid"), ("spatial", "sfid")):
                want = metrics.frechet_distance(*metrics.statistics(sub[kind]), *ref.stats[kind])
                assert got[name][b] == pytest.approx(want, rel=1e-6), name
        assert got["inception_score"][b] == pytest.approx(metrics.inception_score(sub["probs"]), rel=1e-6)
        inside, covered = metrics.manifold_membership(ref.acts["pool"], ref.radii, sub["pool"], radii[rows],
                                                      device="cpu")
        assert got["precision"][b] == inside.mean()  # exact: same distances, same comparisons
        assert got["recall"][b] == covered.mean()
        scaled = [np.asarray(a, np.float64) / ref.kid_scale for a in (sub["pool"], ref.acts["pool"])]
        assert got["kid"][b] == pytest.approx(K.mmd2_unbiased(*scaled), rel=1e-9, abs=1e-12)
    # the identity resample is the batch itself: the point estimates
    point = B.point_metrics(ref, acts)
    for name in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert got[name][0] == pytest.approx(point[name], rel=1e-6), name


def test_seed_set_metrics_are_the_metrics_of_each_set(setting):
    rng, ref = setting
    acts = _acts(rng, 45, shift=0.1)
    per_set = B.SampleBootstrap(ref, acts).seed_set_metrics(3)
    assert len(per_set) == 3
    for rows, got in zip(B.seed_sets(45, 3), per_set):
        sub = {k: v[rows] for k, v in acts.items()}
        want = B.point_metrics(ref, sub)
        for name in ("fid", "sfid", "inception_score"):
            assert got[name] == pytest.approx(want[name], rel=1e-6), name
        assert (got["precision"], got["recall"]) == (want["precision"], want["recall"])
        scaled = [np.asarray(a, np.float64) / ref.kid_scale for a in (sub["pool"], ref.acts["pool"])]
        assert got["kid"] == pytest.approx(K.mmd2_unbiased(*scaled), rel=1e-9)


def test_manifold_coverage_gives_the_recall_of_any_subset():
    rng = np.random.default_rng(5)
    ref, smp = rng.normal(size=(70, 5)).astype(np.float32), rng.normal(size=(60, 5)).astype(np.float32)
    r_ref, r_smp = metrics.manifold_radii(ref, 3, device="cpu"), metrics.manifold_radii(smp, 3, device="cpu")
    inside, (ref_idx, smp_idx) = metrics.manifold_coverage(ref, r_ref, smp, r_smp, device="cpu")
    want_inside, want_covered = metrics.manifold_membership(ref, r_ref, smp, r_smp, device="cpu")
    np.testing.assert_array_equal(inside, want_inside)
    assert set(ref_idx) == set(np.flatnonzero(want_covered))
    keep = np.arange(0, 60, 3)  # a subset of the sample balls
    _, covered = metrics.manifold_membership(ref, r_ref, smp[keep], r_smp[keep], device="cpu")
    assert set(ref_idx[np.isin(smp_idx, keep)]) == set(np.flatnonzero(covered))
    assert metrics.manifold_coverage(ref, r_ref, smp, r_smp, device="cpu", max_pairs=3)[1] is None


def test_intervals_are_seeded_and_cover_the_estimates(setting):
    rng, ref = setting
    acts = _acts(rng, 90, shift=0.3)
    point = B.point_metrics(ref, acts)
    first = B.intervals(point, B.SampleBootstrap(ref, acts).replicates(200, seed=4))
    again = B.intervals(point, B.SampleBootstrap(ref, acts).replicates(200, seed=4))
    other = B.intervals(point, B.SampleBootstrap(ref, acts).replicates(200, seed=5))
    assert first == again and first != other
    assert set(first) == set(B.DIRECTIONS)
    for name, (low, high) in first.items():
        assert low < point[name] < high, name
    # the FID replicates are biased upwards by the repeated rows; the interval is re-centred on the estimate
    reps = B.SampleBootstrap(ref, acts).replicates(200, seed=4)
    assert reps["fid"].mean() > point["fid"] and reps["recall"].mean() < point["recall"]
    shift = point["fid"] - reps["fid"].mean()
    assert first["fid"] == pytest.approx([np.quantile(reps["fid"], 0.025) + shift,
                                          np.quantile(reps["fid"], 0.975) + shift])
    # precision is a plain mean over the samples: plain percentile interval
    assert first["precision"] == pytest.approx(list(np.quantile(reps["precision"], [0.025, 0.975])))
    with pytest.raises(ValueError, match="at least 2 replicates"):
        B.SampleBootstrap(ref, acts).replicates(1)


def test_identical_batches_differ_by_exactly_zero(setting):
    rng, ref = setting
    acts = _acts(rng, 60)
    result = B.compare(B.SampleBootstrap(ref, acts), B.SampleBootstrap(ref, {k: v.copy() for k, v in acts.items()}),
                       n_boot=100, seed=0, num_seed_sets=3)
    for name in B.DIRECTIONS:
        assert result["difference"][name] == 0.0
        assert result["difference_intervals"][name] == [0.0, 0.0]
        assert result["seed_sets"]["wins"][name] == {"b_better": 0, "a_better": 0, "ties": 3}
    assert result["seed_sets"]["sizes"] == [20, 20, 20]
    assert "**" not in differences_table(["setting"], [(["same"], result, "")])


def test_a_known_shift_is_detected_and_noise_is_not(setting):
    rng, ref = setting
    base = _acts(rng, 120)
    shifted = {**base, "pool": base["pool"] + 0.6, "spatial": base["spatial"] + 0.6}  # same seeds, moved away
    resampled = _acts(rng, 120)  # new seeds, same distribution as the reference
    a = B.SampleBootstrap(ref, base)
    worse = B.compare(a, B.SampleBootstrap(ref, shifted), n_boot=300, seed=1)
    for name in ("fid", "sfid", "kid"):
        low, high = worse["difference_intervals"][name]
        assert worse["difference"][name] > 0 and low > 0, name
        assert worse["seed_sets"]["wins"][name]["a_better"] == 5
    assert worse["difference_intervals"]["precision"][1] < 0
    assert "**+" in differences_table(["setting"], [(["shifted"], worse, "")])
    # KID of an independent draw from the reference's distribution: its interval holds 0
    kid_interval = B.intervals(B.point_metrics(ref, resampled),
                               B.SampleBootstrap(ref, resampled).replicates(300, seed=1))["kid"]
    assert kid_interval[0] < 0 < kid_interval[1]
    # and the shifted batch's KID interval excludes 0
    shifted_interval = worse["b"]["intervals"]["kid"]
    assert excludes_zero(shifted_interval) and shifted_interval[0] > 0


def test_compare_refuses_unpaired_or_too_small_inputs(setting):
    rng, ref = setting
    a, b = B.SampleBootstrap(ref, _acts(rng, 30)), B.SampleBootstrap(ref, _acts(rng, 31))
    with pytest.raises(ValueError, match="same seeds"):
        B.compare(a, b, n_boot=10)
    with pytest.raises(ValueError, match="use fewer seed sets"):
        B.compare(a, B.SampleBootstrap(ref, _acts(rng, 30)), n_boot=10, num_seed_sets=10)


def test_check_paired_batches(tmp_path):
    images = np.zeros((6, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=images)
    np.savez(tmp_path / "b.npz", arr_0=images[:5])
    with pytest.raises(ValueError, match="holds 6 images.*5"):
        B.check_paired_batches(tmp_path / "a.npz", tmp_path / "b.npz")
    np.savez(tmp_path / "la.npz", arr_0=images, arr_1=np.arange(6))
    np.savez(tmp_path / "lb.npz", arr_0=images, arr_1=np.arange(6)[::-1])
    with pytest.raises(ValueError, match="different class labels"):
        B.check_paired_batches(tmp_path / "la.npz", tmp_path / "lb.npz")
    for run, seed in (("r1", 0), ("r2", 1)):
        (tmp_path / run).mkdir()
        np.savez(tmp_path / run / "s.npz", arr_0=images)
        (tmp_path / run / "manifest.json").write_text(
            json.dumps({"config": {"sampling": {"seed": seed, "num_samples": 6}}}))
    with pytest.raises(ValueError, match="different --seed"):
        B.check_paired_batches(tmp_path / "r1" / "s.npz", tmp_path / "r2" / "s.npz")
    assert B.check_paired_batches(tmp_path / "la.npz", tmp_path / "a.npz") == 6


class _Encoded:
    """Images are 1x1 pixels that encode a row of fixed activations (see test_evaluator.FixtureBackend)."""

    name = "bootstrap-test"

    def __init__(self, tables):
        self.tables = tables

    @staticmethod
    def encode(set_id, n):
        idx = np.arange(n)
        return np.stack([idx // 256, idx % 256, np.full(n, set_id)], axis=-1).astype(np.uint8)[:, None, None, :]

    def compute(self, batch):
        idx = batch[:, 0, 0, 0].astype(int) * 256 + batch[:, 0, 0, 1]
        table = self.tables[int(batch[0, 0, 0, 2])]
        return {k: v[idx] for k, v in table.items()}


def test_evaluator_cli_intervals_and_compare(tmp_path, capsys):
    from evaluations.backends import register_backend
    from evaluations.evaluator import main

    rng = np.random.default_rng(3)
    base = _acts(rng, 40)
    tables = {0: _acts(rng, 50), 1: base, 2: {**base, "pool": base["pool"] + 1.0, "spatial": base["spatial"] + 1.0}}
    register_backend("bootstrap-test", lambda: _Encoded(tables))
    paths = {i: tmp_path / f"b{i}.npz" for i in tables}
    for i, path in paths.items():
        np.savez(path, _Encoded.encode(i, len(tables[i]["pool"])))
    common = ["--backend", "bootstrap-test", "--quiet", "--no_cache"]

    out = tmp_path / "m.json"
    assert main([str(paths[0]), str(paths[1]), "--intervals", "50", "--json", str(out)] + common) == 0
    data = json.loads(out.read_text())
    assert all(isinstance(data[k], float) for k in ("fid", "kid", "precision", "recall"))  # plain numbers stay
    assert set(data["intervals"]) == set(B.DIRECTIONS) and data["bootstrap"]["replicates"] == 50
    assert "reference is held fixed" in data["bootstrap"]["resampled"]
    assert data["kid_options"]["normalisation"] == "reference_rms"
    assert "| FID↓ |" in capsys.readouterr().out

    out = tmp_path / "c.json"
    assert main([str(paths[0]), str(paths[1]), "--compare", str(paths[2]), "--intervals", "50", "--seed_sets", "4",
                 "--json", str(out)] + common) == 0
    data = json.loads(out.read_text())
    assert data["difference"]["fid"] == pytest.approx(data["b"]["fid"] - data["a"]["fid"])
    assert data["difference_intervals"]["fid"][0] > 0
    assert data["seed_sets"]["wins"]["fid"]["a_better"] == 4
    assert "seed sets: B better / A better / tie" in capsys.readouterr().out

    np.savez(tmp_path / "short.npz", _Encoded.encode(2, 30))
    assert main([str(paths[0]), str(paths[1]), "--compare", str(tmp_path / "short.npz")] + common) == 2
    assert "same seeds" in capsys.readouterr().err


def test_value_intervals_stay_in_the_metric_range():
    # recall's replicates sit below the estimate (fewer distinct balls); re-centring can push the top past 1
    reps = {"recall": np.linspace(0.80, 0.96, 101), "precision": np.linspace(0.5, 0.7, 101)}
    got = B.intervals({"recall": 0.97, "precision": 0.6}, reps)
    shift = 0.97 - reps["recall"].mean()
    assert got["recall"] == pytest.approx([np.quantile(reps["recall"], 0.025) + shift, 1.0])
    assert got["precision"] == pytest.approx([0.505, 0.695])

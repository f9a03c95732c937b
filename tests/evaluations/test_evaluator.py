"""ADM evaluator: golden-fixture reproduction, streaming reader, cache and input validation.

Nothing here needs TensorFlow (see test_evaluator_tf.py for the Inception-graph path).  The fixture
``evaluator_visible.pt`` holds activations and the numbers OpenAI's evaluator computed from them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluations import manifolds, metrics
from evaluations.evaluator import Evaluator, cache_path_for, main
from evaluations.npz import NpzImageReader, inspect_npz

from conftest import assert_close

GOLDEN_DIR = Path(
    os.environ.get("PAG_GOLDEN_DIR") or Path(__file__).resolve().parents[3] / "shared" / "golden"
)


@pytest.fixture(scope="module")
def fx():
    path = GOLDEN_DIR / "evaluator_visible.pt"
    assert path.is_file(), f"golden fixture missing: {path} (set PAG_GOLDEN_DIR)"
    data = torch.load(path, weights_only=True)
    inputs = {k: v.numpy() for k, v in data["inputs"].items()}
    expected = {k: (v.numpy() if torch.is_tensor(v) else float(v)) for k, v in data["expected"].items()}
    return inputs, expected, data["tolerance"]


# ----------------------------------------------------------------------------------------------------
# golden fixture, through the public functions
# ----------------------------------------------------------------------------------------------------


@pytest.mark.golden
def test_statistics_match_reference(fx):
    inputs, expected, tol = fx
    mu_r, sigma_r = metrics.statistics(inputs["ref_pool"])
    mu_s, sigma_s = metrics.statistics(inputs["sample_pool"])
    assert mu_r.dtype == np.float32 and sigma_r.dtype == np.float64
    assert_close(mu_r, expected["ref_pool_mu"], tol["ref_pool_mu"], "ref_pool_mu")
    assert_close(mu_s, expected["sample_pool_mu"], tol["sample_pool_mu"], "sample_pool_mu")
    assert_close(np.trace(sigma_r), expected["ref_pool_sigma_trace"], tol["ref_pool_sigma_trace"], "ref trace")
    assert_close(
        np.trace(sigma_s), expected["sample_pool_sigma_trace"], tol["sample_pool_sigma_trace"], "trace"
    )


@pytest.mark.golden
@pytest.mark.slow
@pytest.mark.parametrize("kind,key", [("pool", "fid"), ("spatial", "sfid")])
def test_fid_and_sfid_match_reference(fx, kind, key):
    inputs, expected, tol = fx
    ref = metrics.statistics(inputs[f"ref_{kind}"])
    sample = metrics.statistics(inputs[f"sample_{kind}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated scipy arguments, no stray warnings
        got = metrics.frechet_distance(*sample, *ref)
    assert_close(got, expected[key], tol[key], key)


@pytest.mark.golden
@pytest.mark.parametrize("split,key", [(5000, "inception_score"), (100, "inception_score_split100")])
def test_inception_score_matches_reference(fx, split, key):
    inputs, expected, tol = fx
    got = metrics.inception_score(inputs["sample_probs"], split_size=split)
    assert_close(got, expected[key], tol[key], key)


@pytest.mark.golden
def test_manifold_radii_on_float16_grid(fx):
    inputs, expected, tol = fx
    for name in ("ref", "sample"):
        radii = metrics.manifold_radii(inputs[f"{name}_pool"], k=3)
        want = expected[f"{name}_radii"]
        assert radii.shape == want.shape and radii.dtype == np.float32
        assert_close(radii, want, tol[f"{name}_radii"], f"{name}_radii")
        assert_close(radii, want, 0.0, f"{name}_radii", rel=3e-3)
        # float16 distances: every radius is a float16 value
        assert np.array_equal(radii.astype(np.float16).astype(np.float32), radii)


@pytest.mark.golden
def test_precision_recall_match_reference_exactly(fx):
    inputs, expected, _ = fx
    p, r = metrics.precision_recall(inputs["ref_pool"], inputs["sample_pool"], k=3)
    assert (p, r) == (expected["precision"], expected["recall"])


@pytest.mark.golden
def test_precision_recall_float32_fallback(fx):
    inputs, expected, _ = fx
    ref, sample = inputs["ref_pool"] * 16, inputs["sample_pool"] * 16
    # float16 squared norms overflow here, so the float16 block is not finite
    norms = metrics.fp16_squared_norms(torch.from_numpy(ref))
    assert not torch.isfinite(norms).all()
    p, r = metrics.precision_recall(ref, sample, k=3)
    assert (p, r) == (expected["precision_fp32_path"], expected["recall_fp32_path"])


@pytest.mark.golden
def test_precision_recall_independent_of_chunking(fx):
    inputs, expected, _ = fx
    ref, sample = inputs["ref_pool"], inputs["sample_pool"]
    p, r = metrics.precision_recall(
        ref, sample, k=3, row_batch_size=136, col_batch_size=96, max_block_elements=50 * 96
    )
    assert (p, r) == (expected["precision"], expected["recall"])
    radii = metrics.manifold_radii(ref, 3, row_batch_size=64, col_batch_size=40, max_block_elements=999)
    np.testing.assert_array_equal(radii, metrics.manifold_radii(ref, 3))


def test_fp16_fallback_is_per_reference_block():
    # One huge row makes its own blocks non-finite in float16; blocks without it stay in float16.
    rng = np.random.default_rng(0)
    feats = rng.random((24, 16)).astype(np.float32)
    feats[0] *= 300.0  # squared norm > 65504
    full = metrics.manifold_radii(feats, 3, row_batch_size=8, col_batch_size=8)
    all16 = feats[8:]
    # rows 8..23 against columns 8..23 never see row 0, so those blocks are float16: compare against a
    # direct float16 computation of those rows restricted to the other columns where row 0 is absent
    d16 = manifolds._distances_fp16(
        manifolds._Features(all16, torch.device("cpu")),
        manifolds._Features(all16, torch.device("cpu")),
        slice(0, 16),
        slice(0, 16),
    ).float()
    d32_col0 = ((feats[8:, None, :].astype(np.float64) - feats[None, :8, :]) ** 2).sum(-1)
    both = np.concatenate([d32_col0, d16.numpy()], axis=1)
    np.testing.assert_allclose(full[8:], np.sort(both, axis=1)[:, 3], rtol=1e-5)


def test_frechet_distance_singular_product_falls_back_to_eps(monkeypatch):
    calls = []
    real = metrics._sqrtm

    def flaky(mat):
        calls.append(mat)
        if len(calls) == 1:
            return np.full_like(mat, np.inf)
        return real(mat)

    monkeypatch.setattr(metrics, "_sqrtm", flaky)
    mu = np.zeros(3)
    sigma = np.diag([1.0, 2.0, 0.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        d = metrics.frechet_distance(mu, sigma, mu, sigma)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (sigma + 1e-6 * np.eye(3)) @ (sigma + 1e-6 * np.eye(3)))
    assert abs(d) < 1e-5


def test_frechet_distance_rejects_large_imaginary_part(monkeypatch):
    monkeypatch.setattr(metrics, "_sqrtm", lambda m: np.eye(len(m)) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))


def test_frechet_distance_known_value():
    # 1-D Gaussians: d^2 = (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    d = metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert d == pytest.approx(4.0 + 1.0)
    with pytest.raises(ValueError, match="different shapes"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_precision_recall_needs_k_plus_one_rows():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 4"):
        metrics.precision_recall(rng.random((10, 8)), rng.random((3, 8)), k=3)
    with pytest.raises(ValueError, match="at least 4"):
        metrics.manifold_radii(rng.random((3, 8)), k=3)


# ----------------------------------------------------------------------------------------------------
# Evaluator on the fixture: a backend that maps tiny index images to fixture rows
# ----------------------------------------------------------------------------------------------------


class FixtureBackend:
    """Images are 1x1 pixels that encode (set, row); features are the fixture's rows."""

    name = "fixture"

    def __init__(self, inputs):
        self.inputs = inputs
        self.calls = 0

    @staticmethod
    def encode(set_id, n):
        idx = np.arange(n)
        pix = np.stack([idx // 256, idx % 256, np.full(n, set_id)], axis=-1).astype(np.uint8)
        return pix[:, None, None, :]

    def compute(self, batch):
        self.calls += 1
        idx = batch[:, 0, 0, 0].astype(int) * 256 + batch[:, 0, 0, 1]
        set_id = int(batch[0, 0, 0, 2])
        prefix = "ref" if set_id == 0 else "sample"
        probs = (
            self.inputs["sample_probs"][idx]
            if set_id == 1
            else np.full((len(idx), 1008), 1 / 1008, np.float32)
        )
        return {
            "pool": self.inputs[f"{prefix}_pool"][idx],
            "spatial": self.inputs[f"{prefix}_spatial"][idx],
            "probs": probs,
        }


@pytest.mark.golden
@pytest.mark.slow
def test_evaluator_with_precomputed_reference_statistics(fx, tmp_path):
    inputs, expected, tol = fx
    n_stats = 200
    mu, sigma = metrics.statistics(inputs["ref_pool"][:n_stats])
    mu_s, sigma_s = metrics.statistics(inputs["ref_spatial"][:n_stats])
    ref_path, sample_path = tmp_path / "ref.npz", tmp_path / "sample.npz"
    np.savez(ref_path, FixtureBackend.encode(0, 400), mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    np.savez(sample_path, FixtureBackend.encode(1, 320))

    backend = FixtureBackend(inputs)
    ev = Evaluator(backend, batch_size=64, progress=False)
    res = ev.evaluate(ref_path, sample_path)
    assert set(res) == {"inception_score", "fid", "sfid", "precision", "recall", "kid"}
    assert_close(res["fid"], expected["fid_precomputed_ref_stats"], tol["fid_precomputed_ref_stats"], "fid")
    assert_close(res["sfid"], expected["sfid_precomputed_ref_stats"], tol["sfid_precomputed_ref_stats"], "sfid")
    assert_close(res["inception_score"], expected["inception_score"], tol["inception_score"], "IS")
    assert (res["precision"], res["recall"]) == (expected["precision"], expected["recall"])
    assert backend.calls == 7 + 5  # ceil(400 / 64) + ceil(320 / 64)

    # the caches hold the activations and their own statistics; a second pass reads them back
    for path, prefix, n in ((ref_path, "ref", 400), (sample_path, "sample", 320)):
        cache = cache_path_for(path, "fixture")
        assert cache.is_file()
        assert cache.stat().st_mode & 0o777 == path.stat().st_mode & 0o777  # an ordinary file, like the batch
        with np.load(cache) as data:
            np.testing.assert_array_equal(data["pool"], inputs[f"{prefix}_pool"][:n])
            np.testing.assert_array_equal(data["spatial"], inputs[f"{prefix}_spatial"][:n])
    feats = ev.batch_features(sample_path)
    assert backend.calls == 12
    np.testing.assert_array_equal(feats.acts["probs"], inputs["sample_probs"])
    assert_close(feats.stats["pool"][0], expected["sample_pool_mu"], tol["sample_pool_mu"], "cached mu")


# ----------------------------------------------------------------------------------------------------
# streaming reader and cache
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reader_streams_rows(tmp_path, compressed):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (23, 5, 7, 3), dtype=np.uint8)
    path = tmp_path / "b.npz"
    (np.savez_compressed if compressed else np.savez)(path, images, np.arange(23))
    info = inspect_npz(path)
    assert info.image_shape == (23, 5, 7, 3) and info.image_dtype == np.uint8
    assert set(info.keys) == {"arr_0", "arr_1"}
    with NpzImageReader(path) as reader:
        assert len(reader) == 23
        parts = list(reader.batches(10))
    assert [len(p) for p in parts] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(parts), images)


@pytest.mark.golden
def test_cache_invalidated_when_batch_changes(fx, tmp_path):
    inputs, _, _ = fx
    path = tmp_path / "s.npz"
    np.savez(path, FixtureBackend.encode(1, 20))
    backend = FixtureBackend(inputs)
    ev = Evaluator(backend, batch_size=8, progress=False)
    first = ev.batch_features(path)
    assert backend.calls == 3
    ev.batch_features(path)
    assert backend.calls == 3  # reused
    np.savez(path, FixtureBackend.encode(1, 30))  # rewritten batch: new size / mtime / content
    second = ev.batch_features(path)
    assert backend.calls == 3 + 4
    assert second.num_images == 30 and first.num_images == 20
    Evaluator(backend, batch_size=8, progress=False, use_cache=False).batch_features(path)
    assert backend.calls == 7 + 4


# ----------------------------------------------------------------------------------------------------
# malformed input: clear ValueErrors, raised before any feature is computed
# ----------------------------------------------------------------------------------------------------


class ExplodingBackend:
    name = "exploding"

    def compute(self, batch):
        raise AssertionError("the backend must not run on malformed input")


def _good(path, n=8):
    np.savez(path, np.zeros((n, 8, 8, 3), np.uint8))
    return path


def _evaluate(ref, sample):
    return Evaluator(ExplodingBackend(), progress=False, use_cache=False).evaluate(ref, sample)


def test_error_missing_arr_0(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((8, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"no 'arr_0'.*np\.savez"):
        _evaluate(_good(tmp_path / "ref.npz"), bad)


def test_error_float_images(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, np.zeros((8, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"uint8.*float32.*astype\(np\.uint8\)"):
        _evaluate(_good(tmp_path / "ref.npz"), bad)


def test_error_nchw_layout(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, np.zeros((8, 3, 16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"NCHW.*transpose\(0, 2, 3, 1\)"):
        _evaluate(_good(tmp_path / "ref.npz"), bad)


@pytest.mark.parametrize("shape", [(8, 16, 16, 4), (8, 16, 16, 1), (8, 16, 16)])
def test_error_wrong_channels(tmp_path, shape):
    bad = tmp_path / "bad.npz"
    np.savez(bad, np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        _evaluate(_good(tmp_path / "ref.npz"), bad)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        _evaluate(bad, _good(tmp_path / "sample.npz"))


def test_error_too_few_samples(tmp_path):
    with pytest.raises(ValueError, match=r"3 images.*k=3.*at least 4"):
        _evaluate(_good(tmp_path / "ref.npz"), _good(tmp_path / "s.npz", n=3))
    with pytest.raises(ValueError, match=r"at least 4"):
        _evaluate(_good(tmp_path / "r.npz", n=2), _good(tmp_path / "s2.npz"))


def test_error_reference_without_statistics_or_images(tmp_path):
    ref = tmp_path / "ref.npz"
    np.savez(ref, labels=np.arange(3))
    with pytest.raises(ValueError, match=r"neither images.*nor precomputed statistics.*mu_s"):
        _evaluate(ref, _good(tmp_path / "s.npz"))


@pytest.mark.golden
def test_error_half_a_statistics_pair(tmp_path, fx):
    inputs, _, _ = fx
    ref = tmp_path / "ref.npz"
    np.savez(ref, FixtureBackend.encode(0, 10), mu=np.zeros(2048, np.float32))
    sample = tmp_path / "s.npz"
    np.savez(sample, FixtureBackend.encode(1, 10))
    with pytest.raises(ValueError, match=r"'mu' but not 'sigma'"):
        Evaluator(FixtureBackend(inputs), progress=False, use_cache=False).evaluate(ref, sample)


def test_error_missing_inception_graph(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nowhere" / "classify_image_graph_def.pb"
    ref, sample = _good(tmp_path / "ref.npz"), _good(tmp_path / "s.npz")
    with pytest.raises(ValueError, match=r"not found.*openaipublic.*python -m evaluations\.download_inception"):
        Evaluator("inception", inception_graph=missing, progress=False).evaluate(ref, sample)
    monkeypatch.setenv("ADM_INCEPTION_GRAPH", str(missing))
    assert main([str(ref), str(sample), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "download_inception" in err


@pytest.mark.golden
def test_statistics_only_reference_skips_precision_recall(fx, tmp_path):
    inputs, _, _ = fx
    rng = np.random.default_rng(0)
    pool, spatial = rng.random((30, 6)), rng.random((30, 5))
    ref = tmp_path / "ref.npz"
    mu, sigma = metrics.statistics(pool)
    mu_s, sigma_s = metrics.statistics(spatial)
    np.savez(ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)

    class Small:
        name = "small"

        def compute(self, batch):
            i = batch[:, 0, 0, 1].astype(int)
            return {"pool": pool[i], "spatial": spatial[i], "probs": np.full((len(i), 4), 0.25)}

    sample = tmp_path / "s.npz"
    np.savez(sample, FixtureBackend.encode(1, 30))
    with pytest.warns(RuntimeWarning, match="precision and recall are not computed"):
        res = Evaluator(Small(), progress=False, use_cache=False).evaluate(ref, sample)
    assert res["precision"] is None and res["recall"] is None
    assert abs(res["fid"]) < 1e-6 and abs(res["sfid"]) < 1e-6
    assert res["inception_score"] == pytest.approx(1.0)


@pytest.mark.golden
def test_cli_json_with_registered_backend(fx, tmp_path, capsys):
    from evaluations.backends import register_backend

    inputs, _, _ = fx
    rng = np.random.default_rng(1)
    pool, spatial = rng.random((40, 6)).astype(np.float32), rng.random((40, 5)).astype(np.float32)

    class Tiny:
        name = "tiny-test"

        def compute(self, batch):
            i = batch[:, 0, 0, 1].astype(int)
            p = np.exp(pool[i] - pool[i].max(1, keepdims=True))
            return {"pool": pool[i], "spatial": spatial[i], "probs": p / p.sum(1, keepdims=True)}

    register_backend("tiny-test", lambda: Tiny())
    ref, sample = tmp_path / "r.npz", tmp_path / "s.npz"
    np.savez(ref, FixtureBackend.encode(0, 40))
    np.savez(sample, FixtureBackend.encode(1, 40))
    out = tmp_path / "m" / "metrics.json"
    assert main([str(ref), str(sample), "--backend", "tiny-test", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    for label in ("Inception Score:", "FID:", "sFID:", "Precision:", "Recall:"):
        assert label in text
    data = json.loads(out.read_text())
    assert data["backend"] == "tiny-test"
    assert abs(data["fid"]) < 1e-9 and data["precision"] == 1.0 and data["recall"] == 1.0
    assert cache_path_for(sample, "tiny-test").is_file()
    assert main([str(ref), str(sample), "--backend", "no-such-backend", "--quiet"]) == 2
    assert "unknown feature backend" in capsys.readouterr().err


def test_digits_backend_is_registered():
    from evaluations.backends import available_backends, create_backend

    assert {"inception", "digits"} <= set(available_backends())
    backend = create_backend("digits", graph_path="ignored")
    feats = backend.compute(np.zeros((2, 16, 16, 3), np.uint8))
    assert feats["pool"].shape[0] == feats["spatial"].shape[0] == feats["probs"].shape[0] == 2
    np.testing.assert_allclose(feats["probs"].sum(1), 1.0, rtol=1e-5)
    assert backend.fingerprint().startswith("digits:")



def test_error_reference_statistics_from_another_network(tmp_path):
    rng = np.random.default_rng(2)
    pool, spatial = rng.random((12, 6)), rng.random((12, 5))

    class Small:
        name = "small"

        def compute(self, batch):
            i = batch[:, 0, 0, 1].astype(int)
            return {"pool": pool[i], "spatial": spatial[i], "probs": np.full((len(i), 4), 0.25)}

    ref, sample = tmp_path / "ref.npz", tmp_path / "s.npz"
    np.savez(ref, mu=np.zeros(2048, np.float32), sigma=np.eye(2048), mu_s=np.zeros(5), sigma_s=np.eye(5))
    np.savez(sample, FixtureBackend.encode(1, 12))
    with pytest.raises(ValueError, match=r"dimension 2048.*6-d.*another feature network"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            Evaluator(Small(), progress=False, use_cache=False).evaluate(ref, sample)

"""ADM evaluator through TensorFlow: the Inception-graph loading path end to end, on a synthetic graph.

The real ``classify_image_graph_def.pb`` (95 MB) is not downloaded in tests.  Instead a small GraphDef
with the same tensor names and compatible shapes is written to disk and loaded by the real backend:
``DecodeJpeg`` -> ``Cast`` -> ``ExpandDims`` (the fed input) -> ``ResizeBilinear`` -> normalise ->
``mixed_6/conv`` [N, 17, 17, 16] -> ... -> ``pool_3`` [N, 1, 1, 2048] -> ``pool_3/_reshape`` (batch 1, as in
the real graph) -> ``softmax/logits/MatMul`` [N, 1008] with ``softmax/weights`` -> bias -> ``softmax``.

TensorFlow is required; set ``PAG_ALLOW_NO_TF=1`` to skip these tests where it is not installed.
"""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest
import torch

from evaluations import metrics
from evaluations.evaluator import cache_path_for, main

pytestmark = pytest.mark.slow


def _tf():
    try:
        import tensorflow as tf
    except ImportError as exc:
        if os.environ.get("PAG_ALLOW_NO_TF") == "1":
            pytest.skip(f"TensorFlow is not importable ({exc}) and PAG_ALLOW_NO_TF=1")
        raise
    return tf


RESIZE = 34  # the real graph resizes to 299; 34 -> stride-2 conv -> 17x17 like mixed_6


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv1": rng.normal(0, 0.3, (3, 3, 3, 16)).astype(np.float32),
        "conv2": rng.normal(0, 0.3, (1, 1, 16, 2048)).astype(np.float32),
        "softmax": rng.normal(0, 0.05, (2048, 1008)).astype(np.float32),
        "bias": rng.normal(0, 1.0, (1008,)).astype(np.float32),
    }


def _features(tf, x, w, names=True):
    """The synthetic network from the (un-resized, 0..255) float images up to pool_3 and mixed_6."""
    n = (lambda s: s) if names else (lambda s: None)
    x = tf.raw_ops.ResizeBilinear(images=x, size=[RESIZE, RESIZE], name=n("ResizeBilinear"))
    x = tf.multiply(tf.subtract(x, 128.0, name=n("Sub")), 1.0 / 128.0, name=n("Mul"))
    spatial = tf.nn.conv2d(x, w["conv1"], strides=2, padding="SAME", name=n("mixed_6/conv"))
    h = tf.nn.relu(spatial)
    h = tf.nn.relu(tf.nn.conv2d(h, w["conv2"], strides=1, padding="VALID"))
    pool = tf.nn.avg_pool2d(h, ksize=17, strides=1, padding="VALID", name=n("pool_3"))
    return pool, spatial


def _write_graph(tf, path, w):
    tf1 = tf.compat.v1
    graph = tf1.Graph()
    with graph.as_default():
        contents = tf1.placeholder(tf.string, shape=[], name="DecodeJpeg/contents")
        image = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
        x = tf.cast(image, tf.float32, name="Cast")
        x = tf.expand_dims(x, 0, name="ExpandDims")
        pool, _ = _features(tf, x, w)
        flat = tf.reshape(pool, [1, 2048], name="pool_3/_reshape")
        weights = tf.constant(w["softmax"], name="softmax/weights")
        logits = tf.matmul(flat, weights, name="softmax/logits/MatMul")
        logits = tf.nn.bias_add(logits, tf.constant(w["bias"], name="softmax/biases"), name="softmax/logits")
        tf.nn.softmax(logits, name="softmax")
    names = {op.name for op in graph.get_operations()}
    assert {"ExpandDims", "pool_3", "mixed_6/conv", "softmax/logits/MatMul"} <= names
    path.write_bytes(graph.as_graph_def().SerializeToString())


def _expected_features(tf, images, w):
    pool, spatial = _features(tf, tf.constant(images.astype(np.float32)), w, names=False)
    pool = pool.numpy().reshape(len(images), -1)
    spatial = spatial.numpy()[..., :7].reshape(len(images), -1)
    logits = pool.astype(np.float64) @ w["softmax"].astype(np.float64)  # no bias, as the ADM evaluator
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return pool, spatial, probs / probs.sum(1, keepdims=True)


def test_cli_end_to_end_with_synthetic_inception_graph(tmp_path, monkeypatch, capsys):
    tf = _tf()
    from evaluations import inception

    w = _weights()
    graph = tmp_path / "classify_image_graph_def.pb"
    _write_graph(tf, graph, w)
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    ref, sample = tmp_path / "ref.npz", tmp_path / "sample.npz"
    np.savez(ref, images)
    np.savez_compressed(sample, images, np.arange(40))  # same images, compressed, with labels

    calls = {"compute": 0, "init": 0}
    real_compute, real_init = inception.InceptionGraphBackend.compute, inception.InceptionGraphBackend.__init__

    def counting_compute(self, batch):
        calls["compute"] += 1
        return real_compute(self, batch)

    def counting_init(self, *args, **kwargs):
        calls["init"] += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(inception.InceptionGraphBackend, "compute", counting_compute)
    monkeypatch.setattr(inception.InceptionGraphBackend, "__init__", counting_init)

    out = tmp_path / "metrics.json"
    argv = [str(ref), str(sample), "--inception_graph", str(graph), "--batch_size", "16", "--quiet"]
    assert main(argv + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert calls == {"compute": 6, "init": 1}  # 3 batches per file, one graph import

    result = json.loads(out.read_text())
    for key in ("inception_score", "fid", "sfid", "precision", "recall"):
        assert isinstance(result[key], float), key
    for label in ("Inception Score:", "FID:", "sFID:", "Precision:", "Recall:"):
        assert label in printed
    assert abs(result["fid"]) < 1e-3, result["fid"]
    assert abs(result["sfid"]) < 1e-2, result["sfid"]
    assert result["precision"] == 1.0 and result["recall"] == 1.0

    # the features are those of the network itself, fed at ExpandDims, in the evaluator's layout
    pool, spatial, probs = _expected_features(tf, images, w)
    caches = [cache_path_for(p, "inception") for p in (ref, sample)]
    for cache in caches:
        assert cache.is_file()
        with np.load(cache) as data:
            assert data["pool"].shape == (40, 2048) and data["spatial"].shape == (40, 17 * 17 * 7)
            assert data["probs"].shape == (40, 1008)
            np.testing.assert_allclose(data["pool"], pool, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(data["spatial"], spatial, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(data["probs"], probs, rtol=1e-3, atol=1e-7)
            cached_stats = (data["mu"], data["sigma"])
    assert result["inception_score"] == pytest.approx(metrics.inception_score(probs), rel=1e-4)

    # Second run: everything comes from the caches - the graph is not even imported.  FID and sFID
    # were checked above; here they are stubbed (sqrtm of a 2048x2048 matrix takes ~10 s on CI).
    def no_backend(self, *args, **kwargs):
        raise AssertionError("the Inception backend must not be built when the caches are valid")

    seen = []
    monkeypatch.setattr(inception.InceptionGraphBackend, "__init__", no_backend)
    monkeypatch.setattr(metrics, "frechet_distance", lambda *a, **k: seen.append(a) or 0.0)
    out2 = tmp_path / "metrics2.json"
    assert main(argv + ["--json", str(out2)]) == 0
    second = json.loads(out2.read_text())
    for key in ("inception_score", "precision", "recall"):
        assert second[key] == result[key], key
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0][0], cached_stats[0])  # sample statistics, from the cache
    np.testing.assert_array_equal(seen[0][1], cached_stats[1])

    # --no_cache recomputes
    monkeypatch.setattr(inception.InceptionGraphBackend, "__init__", counting_init)
    assert main(argv + ["--no_cache"]) == 0
    assert calls == {"compute": 12, "init": 2}


def test_graph_without_required_tensors_is_rejected(tmp_path):
    tf = _tf()
    from evaluations.inception import InceptionGraphBackend

    graph = tf.compat.v1.Graph()
    with graph.as_default():
        tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="ExpandDims")
    bad = tmp_path / "bad.pb"
    bad.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ValueError, match=r"not the ADM Inception graph.*pool_3"):
        InceptionGraphBackend(bad)
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff" * 100)
    with pytest.raises(ValueError, match="not a TensorFlow GraphDef"):
        InceptionGraphBackend(junk)


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the float16 reduction order replayed here is that of TensorFlow's x86 CPU kernels",
)
@pytest.mark.parametrize("dim", [2048, 2023, 13, 4001])
def test_fp16_squared_norms_match_tensorflow_cpu(dim):
    tf = _tf()
    rng = np.random.default_rng(dim)
    x = (rng.random((67, dim)) * rng.uniform(0.2, 3.0, (67, 1))).astype(np.float32)
    with tf.device("/CPU:0"):
        want = tf.reduce_sum(tf.square(tf.cast(x, tf.float16)), 1).numpy()
    got = metrics.fp16_squared_norms(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    # the once-rounded float32 sum is a different float16 value for some rows, which is why it matters
    rounded = metrics.fp16_squared_norms(torch.from_numpy(x), "rounded").numpy()
    assert (rounded != want).any()


def test_download_helper_verifies_before_installing(tmp_path):
    tf = _tf()
    from evaluations.download_inception import download_inception_graph

    source = tmp_path / "served.pb"
    _write_graph(tf, source, _weights(1))
    dest = tmp_path / "cache" / "classify_image_graph_def.pb"
    # a file:// URL stands in for the official one (no network in tests)
    got = download_inception_graph(dest, url=source.as_uri(), progress=False)
    assert got == dest and dest.read_bytes() == source.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary left behind

    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"<html>not a graph</html>")
    other = tmp_path / "cache2" / "classify_image_graph_def.pb"
    with pytest.raises(ValueError):
        download_inception_graph(other, url=junk.as_uri(), progress=False)
    assert not list(other.parent.iterdir())  # neither the file nor its temporary

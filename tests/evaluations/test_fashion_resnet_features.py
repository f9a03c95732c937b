"""The shipped Fashion-MNIST ResNet as the evaluator's `fashion_resnet` backend: a second feature space for the
CPU testbed, trained by `scripts/train_fashion_features.py --arch resnet`."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluations.backends import create_backend
from evaluations.classifier_backend import shipped_checkpoint
from evaluations.evaluator import Evaluator
from evaluations.fashion_resnet_features import FashionResNetFeatureBackend, FashionResNetFeatureNet
from evaluations.metrics import frechet_distance

from conftest import garments
from programs import REPO, child_env, find_program

CHECKPOINT = shipped_checkpoint("fashion_resnet")
TEST_REF = REPO / "checkpoints" / "fashion32_test_ref.npz"


def test_backend_gives_the_three_feature_kinds():
    backend = create_backend("fashion_resnet")
    feats = backend.compute(garments(5))
    assert {k: v.shape for k, v in feats.items()} == {"pool": (5, 128), "spatial": (5, 2048), "probs": (5, 10)}
    assert {v.dtype for v in feats.values()} == {np.dtype(np.float32)}
    np.testing.assert_allclose(feats["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert (feats["pool"] >= 0).all() and feats["pool"].std(axis=0).max() > 0  # pooled ReLU maps, not constant
    # batch-independent: one image alone gives the same features as inside a batch (eval-mode BatchNorm)
    alone = backend.compute(garments(5)[2:3])
    np.testing.assert_allclose(alone["pool"][0], feats["pool"][2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone["spatial"][0], feats["spatial"][2], rtol=1e-4, atol=1e-5)


def test_shipped_weights_are_small_float16_and_load_strictly():
    assert os.path.getsize(CHECKPOINT) < 3e6
    state = torch.load(CHECKPOINT, weights_only=True)
    assert set(state) == set(FashionResNetFeatureNet().state_dict())
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}


def test_its_activations_are_kept_apart_from_the_fashion_backend(tmp_path):
    """Another network, another fingerprint: a cache written by `fashion` is never read as `fashion_resnet`."""
    resnet, plain = create_backend("fashion_resnet"), create_backend("fashion")
    assert resnet.fingerprint().startswith("fashion_resnet:") and resnet.fingerprint() != plain.fingerprint()
    batch = tmp_path / "batch.npz"
    np.savez(batch, garments(12))
    first = Evaluator("fashion", cache_dir=tmp_path / "cache", progress=False).batch_features(batch)
    second = Evaluator("fashion_resnet", cache_dir=tmp_path / "cache", progress=False).batch_features(batch)
    assert (first.acts["pool"].shape[1], second.acts["pool"].shape[1]) == (256, 128)
    np.testing.assert_allclose(second.acts["probs"], resnet.compute(garments(12))["probs"], rtol=1e-5, atol=1e-6)


def test_missing_weights_name_the_command_that_trains_them(tmp_path):
    trainer = r"scripts/train_fashion_features\.py --arch resnet$"
    with pytest.raises(FileNotFoundError, match=f"none.pt is missing: train it with {trainer}"):
        FashionResNetFeatureBackend(path=str(tmp_path / "none.pt"))


def test_test_split_accuracy_as_documented():
    """The shipped network reads the first 2,000 test garments (of the shipped reference: the test split, which
    the trainer holds out) at >= 92%."""
    with np.load(TEST_REF) as ref:
        images, labels = ref["arr_0"][:2000], ref["arr_1"][:2000]
    probs = create_backend("fashion_resnet").compute(images)["probs"]
    assert (probs.argmax(1) == labels).mean() >= 0.92


@pytest.mark.e2e
@pytest.mark.usefixtures("one_thread")  # as adm-evaluate runs below: the printed FID must match to the last digit
def test_adm_evaluate_scores_in_the_resnet_space(tmp_path):
    with np.load(TEST_REF) as ref:
        images = ref["arr_0"][:400]
    reference, samples = tmp_path / "ref.npz", tmp_path / "samples.npz"
    np.savez(reference, images[:200])
    np.savez(samples, images[200:])
    evaluator = Evaluator("fashion_resnet", use_cache=False, progress=False)
    stats = [evaluator.batch_features(path).stats["pool"] for path in (samples, reference)]
    fid = frechet_distance(*stats[0], *stats[1])  # the ResNet's 128-d space: the `fashion` network's differs
    program = find_program("adm-evaluate", "pip install -e . installs it")
    result = subprocess.run([program, reference, samples, "--backend", "fashion_resnet", "--no_cache", "--quiet"],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"FID: {fid!r}" in result.stdout, (result.stdout, fid)


def _trainer(*args):
    return subprocess.run([sys.executable, "scripts/train_fashion_features.py", *map(str, args)], cwd=REPO,
                          env=child_env(FASHION_MNIST_DIR=str(REPO / "no_such_folder")), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["command line", "config file"])
def test_trainer_refuses_an_unknown_architecture(tmp_path, where):
    if where == "command line":
        result = _trainer("--arch", "vgg", "--out", tmp_path / "w.pt")
    else:
        (tmp_path / "train.yaml").write_text("arch: vgg\n")
        result = _trainer("--config", tmp_path / "train.yaml", "--out", tmp_path / "w.pt")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --arch must be 'plain' or 'resnet'; got 'vgg'"
    assert not (tmp_path / "w.pt").exists()


def test_each_architecture_writes_its_own_backend_weights_by_default():
    from guided_diffusion.cli.flags import parse
    from scripts.train_fashion_features import create_argparser, output_path

    assert output_path(parse(create_argparser(), ["--arch", "resnet"])) == CHECKPOINT
    assert output_path(parse(create_argparser(), [])) == shipped_checkpoint("fashion")
    assert output_path(parse(create_argparser(), ["--arch", "resnet", "--out", "w.pt"])) == "w.pt"

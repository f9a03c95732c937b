"""Noisy-image classifier training (guided_diffusion.training.classifier_objective, scripts/classifier_train.py)."""

import os

import pytest
import torch
import torch.nn.functional as F

from guided_diffusion.script_util import create_classifier_and_diffusion
from guided_diffusion.training.classifier_objective import NoisyClassifierObjective

from programs import assert_ok, run_script

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CLASSIFIER = dict(image_size=32, classifier_use_fp16=False, classifier_width=32, classifier_depth=1,
                       classifier_attention_resolutions="8", classifier_use_scale_shift_norm=True,
                       classifier_resblock_updown=True, classifier_pool="attention", learn_sigma=False,
                       diffusion_steps=100, noise_schedule="cosine", timestep_respacing="", use_kl=False,
                       predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)


def test_objective_is_cross_entropy_of_the_noised_image_at_its_timestep():
    torch.manual_seed(0)
    classifier, diffusion = create_classifier_and_diffusion(**TINY_CLASSIFIER, num_classes=10)
    x0, noise = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 3, 32, 32)
    t, labels = torch.tensor([0, 50, 99]), torch.tensor([1, 7, 9])
    losses = NoisyClassifierObjective(diffusion).training_losses(classifier, x0, t, {"y": labels}, noise)
    signal = torch.from_numpy(diffusion.sqrt_alphas_cumprod)[t].float()[:, None, None, None]
    noise_level = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod)[t].float()[:, None, None, None]
    logits = classifier(signal * x0 + noise_level * noise, t)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(losses["loss"], F.cross_entropy(logits, labels, reduction="none"),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(losses["accuracy"], (logits.argmax(-1) == labels).float())
    with pytest.raises(ValueError, match="class labels"):
        NoisyClassifierObjective(diffusion).training_losses(classifier, x0, t, {}, noise)


@pytest.mark.e2e
def test_classifier_train_console_script_trains_and_resumes(tmp_path):
    flags = [f"--{k}={v}" for k, v in TINY_CLASSIFIER.items()] + [
        "--num_classes=10", "--data_dir=digits:train", "--batch_size=8", "--log_interval=1", "--save_interval=2",
        "--progress=False", "--run_dir", str(tmp_path)]
    assert_ok(run_script("pag-classifier-train", *flags, "--max_steps=1"))
    assert "accuracy_q" in open(os.path.join(tmp_path, "progress.csv")).readline()  # accuracy by noise level
    assert_ok(run_script("pag-classifier-train", *flags, "--max_steps=2"))
    assert "loading model from checkpoint" in open(os.path.join(tmp_path, "log.txt")).read()
    state = torch.load(os.path.join(tmp_path, "model000002.pt"), weights_only=True)
    assert state["out.2.c_proj.weight"].shape[0] == 10  # attention pooling projects onto the 10 classes


@pytest.mark.e2e
def test_classifier_train_refuses_unlabelled_flags(tmp_path):
    result = run_script("pag-classifier-train", "--image_size=32", "--learning_rate=1", "--run_dir", str(tmp_path))
    assert result.returncode != 0 and "learning_rate" in result.stderr

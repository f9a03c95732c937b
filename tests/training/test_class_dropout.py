"""Class dropout (`--class_dropout_prob`): the null label row, label replacement, resuming, and the release's shapes."""

import os

import pytest
import torch

from guided_diffusion.data.datasets import load_data
from guided_diffusion.diffusion.timestep_samplers import create_named_schedule_sampler
from guided_diffusion.model.checkpoints import CheckpointMismatchError, load_checkpoint
from guided_diffusion.training import metrics_log as logger
from guided_diffusion.training.loop import TrainLoop

from conftest import tiny_adm

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

CLASSES = 10
COND = dict(image_size=8, attention_resolutions="4", class_cond=True, num_classes=CLASSES)


def cond_loop(run_dir, max_steps, null_label=True, class_dropout_prob=0.5):
    logger.configure(str(run_dir), formats=("jsonl",))
    model, diffusion = tiny_adm(seed=0, null_label=null_label, **COND)
    data = load_data(data_dir="digits:train", batch_size=8, image_size=8, class_cond=True, seed=3)
    return TrainLoop(model=model, diffusion=diffusion, data=data, batch_size=8, lr=1e-3, ema_rate="0.9",
                     log_interval=1, save_interval=1000, seed=7, progress=False, max_steps=max_steps,
                     run_dir=str(run_dir), schedule_sampler=create_named_schedule_sampler("uniform", diffusion),
                     class_dropout_prob=class_dropout_prob)


def test_null_label_is_one_more_embedding_row_and_the_release_shape_is_kept():
    plain, _ = tiny_adm(seed=0, **COND)
    with_null, _ = tiny_adm(seed=0, weights_seed=1, null_label=True, **COND)
    assert plain.label_emb.weight.shape[0] == CLASSES  # the release's checkpoints keep loading
    assert with_null.label_emb.weight.shape[0] == CLASSES + 1
    assert with_null.null_label == CLASSES and plain.null_label is None
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        out_null = with_null(x, t, y=torch.tensor([CLASSES, CLASSES]))
        out_label = with_null(x, t, y=torch.tensor([0, 0]))
    assert out_null.shape == (2, 3, 8, 8) and not torch.equal(out_null, out_label)


def test_null_label_needs_a_class_conditional_model():
    with pytest.raises(ValueError, match="--class_cond True"):
        tiny_adm(seed=0, null_label=True, image_size=8, attention_resolutions="4")


@pytest.mark.parametrize("expected_null, found_null, hint", [
    (False, True, "set --null_label True"), (True, False, "set --null_label False")])
def test_checkpoint_mismatch_names_the_null_label_flag(expected_null, found_null, hint):
    model, _ = tiny_adm(seed=0, null_label=expected_null, **COND)
    other, _ = tiny_adm(seed=0, null_label=found_null, **COND)
    with pytest.raises(CheckpointMismatchError, match=hint):
        load_checkpoint(model, other.state_dict())


def test_drop_labels_replaces_about_p_of_the_labels_by_the_null_label(tmp_path):
    loop = cond_loop(tmp_path, max_steps=1, class_dropout_prob=0.3)
    labels = torch.arange(20000) % CLASSES
    dropped = loop.drop_labels({"y": labels})["y"]
    changed = dropped != labels
    assert (dropped[changed] == CLASSES).all() and torch.equal(dropped[~changed], labels[~changed])
    # binomial(20000, 0.3): sd 65, so +-400 is a 6-sigma band
    assert abs(int(changed.sum()) - 6000) < 400
    assert loop.drop_labels({}) == {}  # an unconditional batch has no labels to drop


def test_no_dropout_leaves_the_labels_alone(tmp_path):
    loop = cond_loop(tmp_path, max_steps=1, class_dropout_prob=0.0)
    cond = {"y": torch.arange(8)}
    assert loop.drop_labels(cond) is cond


@pytest.mark.parametrize("prob, match", [(0.1, "--null_label True"), (1.0, r"\[0, 1\)"), (-0.1, r"\[0, 1\)")])
def test_bad_dropout_settings_are_refused(tmp_path, prob, match):
    with pytest.raises(ValueError, match=match):
        cond_loop(tmp_path, max_steps=1, null_label=prob != 0.1, class_dropout_prob=prob)


@pytest.mark.slow
def test_resume_with_class_dropout_repeats_the_uninterrupted_run(tmp_path):
    """2 + 2 steps through a checkpoint drop the same labels as 4 straight steps: equal weights bit for bit."""
    cond_loop(tmp_path / "straight", max_steps=4).run_loop()
    cond_loop(tmp_path / "split", max_steps=2).run_loop()
    second = cond_loop(tmp_path / "split", max_steps=4)
    assert second.step == 2
    second.run_loop()
    for name in ("model000004.pt", "ema_0.9_000004.pt"):
        a = torch.load(os.path.join(tmp_path, "straight", name), weights_only=True)
        b = torch.load(os.path.join(tmp_path, "split", name), weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name

"""--channels_last: the same training in another memory layout, and checkpoints that load like any other."""

import json

import pytest
import torch

from guided_diffusion.data.datasets import load_data
from guided_diffusion.diffusion.timestep_samplers import create_named_schedule_sampler
from guided_diffusion.model.checkpoints import load_checkpoint
from guided_diffusion.training import metrics_log as logger
from guided_diffusion.training.loop import TrainLoop

from conftest import tiny_adm

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def train(run_dir, channels_last):
    logger.configure(str(run_dir), formats=("jsonl",))
    model, diffusion = tiny_adm(seed=0, weights_seed=2, image_size=8, attention_resolutions="4")
    data = load_data(data_dir="digits:train", batch_size=8, image_size=8, seed=3)
    loop = TrainLoop(model=model, diffusion=diffusion, data=data, batch_size=8, lr=1e-4, ema_rate="0.9",
                     log_interval=1, save_interval=1000, seed=7, progress=False, max_steps=3, run_dir=str(run_dir),
                     schedule_sampler=create_named_schedule_sampler("uniform", diffusion),
                     channels_last=channels_last)
    loop.run_loop()
    return model


def test_channels_last_trains_the_same_steps_and_saves_a_plain_checkpoint(tmp_path):
    train(tmp_path / "plain", channels_last=False)
    last = train(tmp_path / "last", channels_last=True)
    conv = last.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # the same steps up to summation order: compare losses (Adam's sign-like first updates would magnify any
    # rounding difference in the weights themselves)
    losses = [[row["loss"] for row in map(json.loads, open(tmp_path / run / "log.jsonl"))] for run in ("plain", "last")]
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), atol=0, rtol=1e-4)
    fresh, _ = tiny_adm(image_size=8, attention_resolutions="4")
    load_checkpoint(fresh, str(tmp_path / "last" / "model000003.pt"))  # the checkpoint loads into the usual layout
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in last.state_dict().items())

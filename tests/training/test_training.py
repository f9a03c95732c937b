"""Training: the loss goes down, resuming repeats an uninterrupted run, samplers, data, shipped checkpoints."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from guided_diffusion.data.datasets import load_data
from guided_diffusion.diffusion.timestep_samplers import (
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from guided_diffusion.model.checkpoints import load_checkpoint
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.training import metrics_log as logger
from guided_diffusion.training.loop import TrainLoop, find_resume_checkpoint, parse_resume_step_from_filename

from conftest import tiny_adm
from programs import MPI_HINT, TORCHRUN_HINT, child_env, find_program, require_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADM_CHECKPOINT = os.path.join(ROOT, "checkpoints", "digits_adm16_ema.pt")
ADM_CONFIG = os.path.join(ROOT, "configs", "digits", "model.yaml")

# The tiny ADM at 8x8: attention at 4x4 and in the middle block, learned sigmas (so mse and vb both train).
TINY = dict(image_size=8, attention_resolutions="4", learn_sigma=True, diffusion_steps=50, noise_schedule="cosine",
            dropout=0.1)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


def tiny_model(**overrides):
    return tiny_adm(seed=0, **{**TINY, **overrides})


def make_loop(run_dir, max_steps, sampler="uniform", diffusion_steps=50, batch_size=8, microbatch=-1,
              resume_checkpoint="", dropout=0.1, **kwargs):
    logger.configure(str(run_dir), formats=("jsonl",))
    model, diffusion = tiny_model(diffusion_steps=diffusion_steps, dropout=dropout)
    data = load_data(data_dir="digits:train", batch_size=batch_size, image_size=8, random_flip=True, seed=3)
    options = dict(lr=1e-3, ema_rate="0.9,0.99", log_interval=1, save_interval=1000, seed=7, progress=False)
    options.update(kwargs)
    return TrainLoop(model=model, diffusion=diffusion, data=data, batch_size=batch_size, microbatch=microbatch,
                     schedule_sampler=create_named_schedule_sampler(sampler, diffusion),
                     resume_checkpoint=resume_checkpoint, max_steps=max_steps, run_dir=str(run_dir), **options)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# --------------------------------------------------------------------------------------------------
# Training from scratch and resuming


@pytest.mark.slow
def test_loss_goes_down_from_scratch(tmp_path):
    """60 steps on the digits at 8x8: the mean loss of the last 15 steps is well below the first 15."""
    loop = make_loop(tmp_path, max_steps=60, batch_size=16)
    loop.run_loop()
    rows = read_log(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 61))
    losses = np.array([r["mse"] for r in rows])
    first, last = losses[:15].mean(), losses[-15:].mean()
    assert np.isfinite(losses).all()
    assert last < 0.6 * first, (first, last)
    for key in ("loss", "vb", "loss_q0", "mse_q3", "grad_norm", "lr", "samples"):
        assert key in rows[-1]
    assert os.path.exists(tmp_path / "model000060.pt") and os.path.exists(tmp_path / "ema_0.99_000060.pt")


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["uniform", "loss-second-moment"])
def test_resume_repeats_uninterrupted_run(tmp_path, sampler):
    """3 + 3 steps through a checkpoint give bit for bit the weights, EMA and AdamW state of 6 steps."""
    # Two timesteps warm the loss-aware sampler up within the first steps, so its history matters.
    common = dict(sampler=sampler, diffusion_steps=2, batch_size=16, microbatch=8)
    make_loop(tmp_path / "straight", max_steps=6, **common).run_loop()

    split = tmp_path / "split"
    first = make_loop(split, max_steps=3, **common)
    first.run_loop()
    if sampler == "loss-second-moment":
        assert first.schedule_sampler.warmed_up()
    second = make_loop(split, max_steps=6, **common)  # finds model000003.pt in its run dir
    assert second.step == 3
    second.run_loop()
    assert [r["step"] for r in read_log(split)] == list(range(1, 7))
    for name in ("model000006.pt", "ema_0.9_000006.pt", "ema_0.99_000006.pt", "opt000006.pt"):
        assert_same_state(load(tmp_path / "straight" / name), load(split / name))
    assert load(split / "opt000006.pt")["state"][0]["step"].item() == 6


def test_resume_from_explicit_checkpoint(tmp_path):
    make_loop(tmp_path / "a", max_steps=2).run_loop()
    loop = make_loop(tmp_path / "b", max_steps=3, resume_checkpoint=str(tmp_path / "a" / "model000002.pt"))
    assert loop.step == 2
    assert torch.equal(loop.opt.state_dict()["state"][0]["exp_avg"],
                       load(tmp_path / "a" / "opt000002.pt")["state"][0]["exp_avg"])
    loop.run_loop()
    assert sorted(p.name for p in (tmp_path / "b").glob("model*.pt")) == ["model000003.pt"]


def test_incomplete_checkpoint_is_skipped(tmp_path):
    make_loop(tmp_path, max_steps=2, save_interval=1).run_loop()
    os.remove(tmp_path / "train_state000002.pt")  # as if the run died while writing step 2
    assert find_resume_checkpoint(str(tmp_path)).endswith("model000001.pt")
    assert parse_resume_step_from_filename("/x/y/model012345.pt") == 12345
    assert parse_resume_step_from_filename("/x/ema_0.9999_000010.pt") == 0
    assert not list(tmp_path.glob("*.tmp*"))


def test_lr_anneal_ends_the_run(tmp_path):
    loop = make_loop(tmp_path, max_steps=0, lr_anneal_steps=4)
    loop.run_loop()
    rows = read_log(tmp_path)
    assert loop.step == 4
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["use_fp16", "bf16", "fp16"])
def test_mixed_precision_trains_and_saves_float32(tmp_path, mode):
    kwargs = {"use_fp16": True} if mode == "use_fp16" else {"mixed_precision": mode}
    loop = make_loop(tmp_path, max_steps=3, **kwargs)
    loop.run_loop()
    state = load(tmp_path / "model000003.pt")
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.isfinite(v).all() for v in state.values())
    if mode == "use_fp16":
        assert loop.model.input_blocks[0][0].weight.dtype == torch.float16
        assert torch.equal(loop.model.input_blocks[0][0].weight.float(),
                           state["input_blocks.0.0.weight"].half().float())
    # Training changed the weights.
    model, _ = tiny_model()
    assert not torch.equal(model.state_dict()["input_blocks.0.0.weight"], state["input_blocks.0.0.weight"])


def test_microbatches_give_the_batch_gradient(tmp_path):
    """Accumulated microbatch gradients equal the full-batch gradient (same timesteps and noise)."""
    grads = []
    for microbatch in (-1, 4):
        loop = make_loop(tmp_path / str(microbatch), max_steps=1, microbatch=microbatch, dropout=0.0)
        loop.model.eval()  # no dropout, so the two runs see the same function
        batch, cond = next(loop.data)
        loop.forward_backward(batch, cond)
        grads.append(torch.cat([p.grad.flatten() for p in loop.model.parameters()]))
    # Timesteps and noise come from the same generators in the same order, in 1 or 2 draws.
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Timestep samplers


class _Diffusion:
    num_timesteps = 5


def test_uniform_sampler_weights_are_one():
    t, w = UniformSampler(_Diffusion(), seed=0).sample(1000, "cpu")
    assert t.min() >= 0 and t.max() <= 4 and torch.all(w == 1)
    assert len(set(t.tolist())) == 5


def test_loss_second_moment_resampler():
    sampler = LossSecondMomentResampler(_Diffusion(), seed=0)
    assert np.all(sampler.weights() == 1)
    for _ in range(9):
        sampler.update_with_all_losses([0, 1, 2, 3, 4], [1.0, 1.0, 1.0, 1.0, 4.0])
    assert not sampler.warmed_up()  # nine of ten per timestep
    sampler.update_with_all_losses([0, 1, 2, 3], [1.0] * 4)
    assert not sampler.warmed_up()
    sampler.update_with_all_losses([4], [4.0])
    assert sampler.warmed_up()
    w = sampler.weights()
    expected = np.array([1, 1, 1, 1, 4]) / 8 * (1 - 0.001) + 0.001 / 5
    np.testing.assert_allclose(w, expected)
    # The history keeps the last ten: ten more losses of 1.0 at t=4 even the weights out.
    for _ in range(10):
        sampler.update_with_all_losses([4], [1.0])
    np.testing.assert_allclose(sampler.weights(), np.full(5, 0.2))
    # Importance weights undo the sampling distribution.
    sampler.update_with_local_losses(torch.tensor([4] * 10), torch.full((10,), 9.0))
    t, weights = sampler.sample(2000, "cpu")
    p = sampler.weights() / sampler.weights().sum()
    np.testing.assert_allclose(weights.numpy(), 1 / (5 * p[t.numpy()]), rtol=1e-6)
    assert (t == 4).float().mean() > 0.5
    # State round trip.
    copy = LossSecondMomentResampler(_Diffusion(), seed=1)
    copy.load_state_dict(sampler.state_dict())
    assert torch.equal(copy.sample(50, "cpu")[0], sampler.sample(50, "cpu")[0])


def test_unknown_sampler_name():
    with pytest.raises(NotImplementedError, match="uniform"):
        create_named_schedule_sampler("beta", _Diffusion())


# --------------------------------------------------------------------------------------------------
# Data


def test_folder_and_npz_data(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        name = ("cat" if i % 2 else "dog") + f"_{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            folder / ("sub" if i > 3 else "") / name)
    batch, cond = next(load_data(data_dir=str(folder), batch_size=6, image_size=8, class_cond=True))
    assert batch.shape == (6, 3, 8, 8) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    assert sorted(cond["y"].tolist()) == [0, 0, 0, 1, 1, 1]  # cat = 0, dog = 1

    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "batch.npz", arr_0=images, arr_1=np.arange(10))
    stream = load_data(data_dir=str(tmp_path / "batch.npz"), batch_size=5, image_size=8, class_cond=True,
                       deterministic=True, random_flip=False)
    batch, cond = next(stream)
    assert cond["y"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(batch.permute(0, 2, 3, 1).numpy(), images[:5] / 127.5 - 1, atol=1e-6)
    # Shards of two ranks are disjoint and cover the data.
    seen = []
    for rank in range(2):
        b, c = next(load_data(data_dir=str(tmp_path / "batch.npz"), batch_size=5, image_size=8, class_cond=True,
                              shard=rank, num_shards=2))
        seen += c["y"].tolist()
    assert sorted(seen) == list(range(10))


def test_data_stream_resumes_where_it_stopped():
    a = load_data(data_dir="digits", batch_size=7, image_size=16, seed=5)
    for _ in range(300):  # past an epoch boundary
        next(a)
    state = a.state_dict()
    b = load_data(data_dir="digits", batch_size=7, image_size=16, seed=5)
    b.load_state_dict(state)
    for _ in range(3):
        assert torch.equal(next(a)[0], next(b)[0])


# --------------------------------------------------------------------------------------------------
# The training script, single process and under mpiexec


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT_FLAGS = ["--image_size", "8", "--num_channels", "32", "--channel_mult", "1,2", "--num_res_blocks", "1",
                "--attention_resolutions", "4", "--num_head_channels", "16", "--diffusion_steps", "20",
                "--noise_schedule", "cosine", "--learn_sigma", "True", "--data_dir", "digits",
                "--batch_size", "4", "--log_interval", "1", "--progress", "False"]


@pytest.mark.e2e
def test_image_train_script_runs_and_continues(tmp_path):
    script = _load_script("image_train")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"max_steps": 2, "lr": 3e-4, "schedule_sampler": "loss-second-moment"}))
    run_dir = str(tmp_path / "run")
    script.main(SCRIPT_FLAGS + ["--config", str(config), "--run_dir", run_dir])
    script.main(SCRIPT_FLAGS + ["--config", str(config), "--run_dir", run_dir, "--max_steps", "3"])
    assert sorted(os.listdir(run_dir)) == sorted([
        "args.yaml", "log.jsonl", "log.txt", "progress.csv",
        "model000002.pt", "ema_0.9999_000002.pt", "opt000002.pt", "train_state000002.pt",
        "model000003.pt", "ema_0.9999_000003.pt", "opt000003.pt", "train_state000003.pt"])
    assert [r["step"] for r in read_log(run_dir)] == [1, 2, 3]
    with open(os.path.join(run_dir, "args.yaml")) as f:
        assert yaml.safe_load(f)["schedule_sampler"] == "loss-second-moment"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(SystemExit):  # refused while parsing, before any training
        script.main(["--config", str(bad)])


def _train_two_processes(launcher, run_dir):
    """Two processes: rank 0 writes the checkpoints, and the loss-aware sampler stays in sync."""
    cmd = [*launcher, os.path.join(ROOT, "scripts", "image_train.py"), *SCRIPT_FLAGS,
           "--run_dir", run_dir, "--max_steps", "2", "--schedule_sampler", "loss-second-moment"]
    result = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _assert_two_ranks_trained(run_dir):
    state = load(os.path.join(run_dir, "train_state000002.pt"))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    a, b = (r["sampler"] for r in state["ranks"])
    assert torch.equal(a["loss_history"], b["loss_history"]) and int(a["loss_counts"].sum()) == 16
    assert a["rng"] != b["rng"]  # each rank draws its own timesteps
    assert [r["data"]["shard"] for r in state["ranks"]] == [0, 1]


@pytest.mark.e2e
def test_image_train_under_mpiexec(tmp_path):
    mpiexec = find_program("mpiexec", MPI_HINT)
    require_module("mpi4py", MPI_HINT)
    run_dir = str(tmp_path / "run")
    result = _train_two_processes([mpiexec, "-n", "2", sys.executable], run_dir)
    assert "launcher mpi, 2 process(es)" in result.stderr  # one world of two ranks
    _assert_two_ranks_trained(run_dir)


@pytest.mark.e2e
def test_image_train_under_torchrun(tmp_path):
    torchrun = find_program("torchrun", TORCHRUN_HINT)
    run_dir = str(tmp_path / "run")
    result = _train_two_processes([torchrun, "--standalone", "--nproc_per_node", "2"], run_dir)
    assert "launcher torchrun, 2 process(es)" in result.stderr
    _assert_two_ranks_trained(run_dir)


OUTSIDE_GROUP = """
import sys, torch.distributed as dist
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.data.datasets import load_data
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
assert dist_util.is_distributed() and (dist_util.rank(), dist_util.world_size()) == (rank, 2)
assert dist_util.all_gather_objects(rank * 10) == [0, 10]
assert load_data(data_dir="digits:train", batch_size=2, image_size=8).state_dict()["shard"] == rank
dist_util.barrier()
dist_util.cleanup()
"""


@pytest.mark.e2e
def test_dist_util_follows_a_process_group_set_up_elsewhere(tmp_path):
    """Rank, world size, gathers and data shards come from torch.distributed, not only from setup_dist()."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    store = str(tmp_path / "store")
    procs = [subprocess.Popen([sys.executable, "-c", OUTSIDE_GROUP, str(rank), store], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)


# --------------------------------------------------------------------------------------------------
# The shipped checkpoints and the digits split


def test_digits_split_is_fixed_and_disjoint():
    from guided_diffusion.data.digits import HELDOUT_SIZE, TRAIN_SIZE, load_digits_split, split_indices

    train, heldout = split_indices()
    assert (len(train), len(heldout)) == (TRAIN_SIZE, HELDOUT_SIZE) == (1500, 297)
    assert not set(train.tolist()) & set(heldout.tolist())
    assert sorted(train.tolist() + heldout.tolist()) == list(range(1797))
    # The permutation is numpy's legacy RandomState(0) stream, which numpy keeps stable.
    assert heldout[:5].tolist() == sorted(np.random.RandomState(0).permutation(1797)[1500:].tolist())[:5]
    for size in (16, 32):
        images, labels = load_digits_split(size, "heldout")
        assert images.shape == (297, size, size, 3) and images.dtype == np.uint8
        assert labels.shape == (297,) and set(labels.tolist()) == set(range(10))
        assert np.array_equal(images[..., 0], images[..., 2])  # grey as RGB
    images, _ = load_digits_split(16, "train")
    assert images.shape == (1500, 16, 16, 3) and images.max() == 255 and images.min() == 0


def test_digits_npz_feeds_the_training_data(tmp_path):
    from guided_diffusion.data.digits import load_digits_split, write_digits_npz

    path = write_digits_npz(str(tmp_path / "digits16_train.npz"), 16, "train")
    with np.load(path) as data:
        assert data["arr_0"].shape == (1500, 16, 16, 3) and data["arr_1"].shape == (1500,)
    from_npz = load_data(data_dir=path, batch_size=10, image_size=16, class_cond=True, deterministic=True,
                         random_flip=False)
    builtin = load_data(data_dir="digits:train", batch_size=10, image_size=16, class_cond=True,
                        deterministic=True, random_flip=False)
    (x1, c1), (x2, c2) = next(from_npz), next(builtin)
    assert torch.equal(x1, x2) and torch.equal(c1["y"], c2["y"])
    images, labels = load_digits_split(16, "train")
    assert torch.equal(c1["y"], torch.from_numpy(labels[:10]))


def _adm_flags():
    flags = model_and_diffusion_defaults()
    with open(ADM_CONFIG) as f:
        values = yaml.safe_load(f)
    assert set(values) <= set(flags), set(values) - set(flags)
    flags.update(values)
    return flags


@pytest.mark.slow
def test_shipped_adm_checkpoint_loads_like_an_adm_checkpoint():
    size = os.path.getsize(ADM_CHECKPOINT)
    assert size < 8_000_000, size
    model, diffusion = create_model_and_diffusion(**_adm_flags())
    load_checkpoint(model, ADM_CHECKPOINT)
    state = load(ADM_CHECKPOINT)
    assert all(v.dtype == torch.float32 for v in state.values())
    model.eval()
    # Attention at two resolutions or more, so there is something to perturb.
    sizes = []
    hooks = [block.register_forward_hook(lambda mod, args, out: sizes.append(out.shape[-1]))
             for block in model.attention_blocks().values()]
    with torch.no_grad():
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long))
    for hook in hooks:
        hook.remove()
    assert len(sizes) >= 5 and set(sizes) == {8, 4}, sizes
    # A few denoising steps from noise give digit-like images the feature network reads confidently.
    from evaluations.digits_features import digits_feature_backend
    from guided_diffusion.data.image_io import to_uint8
    from guided_diffusion.respace import space_timesteps
    from guided_diffusion.script_util import create_gaussian_diffusion

    flags = _adm_flags()
    sampler = create_gaussian_diffusion(steps=flags["diffusion_steps"], learn_sigma=True,
                                        noise_schedule=flags["noise_schedule"], timestep_respacing="ddim25")
    assert len(space_timesteps(1000, "ddim25")) == 25
    torch.manual_seed(0)
    with torch.no_grad():
        samples = sampler.ddim_sample_loop(model, (32, 3, 16, 16), progress=False)
    probs = digits_feature_backend().compute(to_uint8(samples).numpy())["probs"]
    assert probs.max(axis=1).mean() > 0.7
    assert len(set(probs.argmax(axis=1).tolist())) >= 5  # not one digit over and over


def test_shipped_feature_network_classifies_heldout_digits():
    from evaluations.digits_features import DEFAULT_CHECKPOINT, digits_feature_backend
    from guided_diffusion.data.digits import load_digits_split

    assert os.path.getsize(DEFAULT_CHECKPOINT) < 1_000_000
    backend = digits_feature_backend()
    assert backend.name == "digits"
    images, labels = load_digits_split(16, "heldout")
    feats = backend.compute(images)
    assert feats["pool"].shape == (297, 128) and feats["spatial"].shape == (297, 512)
    assert feats["probs"].shape == (297, 10)
    assert all(v.dtype == np.float32 for v in feats.values())
    np.testing.assert_allclose(feats["probs"].sum(axis=1), 1, rtol=1e-5)
    accuracy = (feats["probs"].argmax(axis=1) == labels).mean()
    assert accuracy > 0.95, accuracy
    # 32-pixel renderings are resized to the network's 16 pixels and read as well.
    images32, _ = load_digits_split(32, "heldout")
    assert (backend.predict(images32) == labels).mean() > 0.95


def test_non_finite_gradients_stop_the_run(tmp_path):
    loop = make_loop(tmp_path, max_steps=2)
    batch, cond = next(loop.data)
    loop.forward_backward(batch, cond)
    next(loop.model.parameters()).grad[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        loop.optimize()


@pytest.mark.parametrize("warmup, first_decay", [(False, 0.999), (True, 0.1)])
def test_ema_warmup_first_update(tmp_path, warmup, first_decay):
    """One step: the EMA is decay * initial + (1 - decay) * trained, with decay 1/10 under warm-up."""
    loop = make_loop(tmp_path, max_steps=1, batch_size=4, ema_rate="0.999", ema_warmup=warmup)
    initial = [p.detach().clone() for p in loop.master_params]
    loop.run_loop()
    for init, trained, ema in zip(initial, loop.master_params, loop.ema_params[0]):
        expected = first_decay * init + (1.0 - first_decay) * trained.detach()
        torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-6)


def test_ema_decay_rule():
    from guided_diffusion.training.loop import ema_decay

    assert ema_decay(0.999, 0, False) == 0.999
    assert ema_decay(0.999, 0, True) == pytest.approx(0.1)
    assert ema_decay(0.999, 90, True) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 10 ** 6, True) == 0.999  # the rate caps the warm-up

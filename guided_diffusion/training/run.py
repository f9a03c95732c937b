"""What the training scripts share: the training flags, and one run from parsed flags to the last checkpoint.

`scripts/image_train.py` trains a diffusion model and `scripts/classifier_train.py` a noisy-image
classifier; both are this run with another network and objective (see `guided_diffusion.training.classifier_objective`).
"""

import logging
import os
import time

import torch
import yaml

from guided_diffusion.cli.flags import Flag, FlagGroup, create_parser
from guided_diffusion.data.datasets import load_data
from guided_diffusion.diffusion.timestep_samplers import SAMPLER_NAMES, create_named_schedule_sampler
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.runtime.files import atomic_write_text
from guided_diffusion.runtime.logs import log_to_console, log_to_file, stop_logging
from guided_diffusion.training import metrics_log as logger
from guided_diffusion.training.loop import MIXED_PRECISION_MODES, TrainLoop

log = logging.getLogger(__name__)

TRAIN_FLAGS = FlagGroup("training", [
    Flag("data_dir", "", "an image folder (class = file name before the first '_'), an .npz (arr_0 uint8 NHWC, "
                         "arr_1 labels), 'digits' / 'digits:train' (the scikit-learn digits) or 'fashion:train' "
                         "(Fashion-MNIST, see guided_diffusion.data.fashion_mnist)"),
    Flag("schedule_sampler", "uniform", f"timestep sampler: {' or '.join(SAMPLER_NAMES)}"),
    Flag("lr", 1e-4, "AdamW learning rate"),
    Flag("weight_decay", 0.0, "AdamW weight decay"),
    Flag("lr_anneal_steps", 0, "decay the learning rate linearly to 0 over this many steps and stop there "
                               "(0: constant)"),
    Flag("max_steps", 0, "stop after this many steps in all, counting resumed ones (0: no limit)"),
    Flag("batch_size", 1, "images per process and step"),
    Flag("microbatch", -1, "split each batch into chunks of this size, accumulating gradients (-1: no split)"),
    Flag("ema_rate", "0.9999", "EMA decay rate(s), comma-separated"),
    Flag("ema_warmup", False, "decay min(rate, (1 + n) / (10 + n)) after n steps, so a short run's EMA forgets the "
                              "random initialisation"),
    Flag("log_interval", 10, "steps between metric log lines (progress.csv, log.txt)"),
    Flag("save_interval", 10000, "write a checkpoint every this many steps (and at the end)"),
    Flag("resume_checkpoint", "", "a modelNNNNNN.pt to start from (ignored when run_dir already holds "
                                  "checkpoints)"),
    Flag("fp16_scale_growth", 1e-3, "the release's float16 loss-scale growth per step (log2 units)"),
    Flag("mixed_precision", "none", f"autocast the forward pass: {', '.join(MIXED_PRECISION_MODES)} (fp16 uses a "
                                    "GradScaler)"),
    Flag("seed", 0, "seed of the model initialisation, the data order and all training noise"),
    Flag("run_dir", "", "where logs and checkpoints go (default: $OPENAI_LOGDIR, else runs/train-<time>)"),
    Flag("random_flip", True, "flip images horizontally at random (turn off for digits and text)"),
    Flag("channels_last", False, "weights and activations in channels-last memory format (on a CPU, faster bf16 "
                                 "steps with the same losses up to rounding: benchmarks/training_speed.py)"),
    Flag("class_dropout_prob", 0.0, "replace each label by the null label with this probability (classifier-free "
                                    "guidance; needs --null_label True), e.g. 0.1"),
    Flag("random_crop", False, "random crops of the data (the release's augmentation)"),
    Flag("progress", True, "show a progress bar on rank 0"),
])


def train_parser(description, network_groups):
    """The flags of a training script: the training flags above and the network's groups (e.g. the release's
    model and diffusion flags), behind the one repeatable `--config FILE.yaml`."""
    return create_parser(description, [TRAIN_FLAGS, *network_groups])


def run_training(args, build, *, use_fp16, class_labels):
    """Train from parsed flags until `max_steps` (resuming from the run folder's latest checkpoint).

    `build()` returns `(network, objective)`: the objective has `training_losses(network, x_start, t,
    model_kwargs, noise)` and `num_timesteps`, as a `GaussianDiffusion` does. `class_labels`: the data
    stream yields `{"y": labels}`. Returns the exit status 0.
    """
    launch = dist_util.setup_dist()
    rank = dist_util.rank()  # the process group's, however it was set up
    run_dir = args.run_dir or os.environ.get("OPENAI_LOGDIR") or time.strftime("runs/train-%Y%m%d-%H%M%S")
    run_dir = dist_util.broadcast_object(run_dir)
    logger.configure(run_dir, rank=rank)  # the metrics record: progress.csv, log.jsonl
    log_to_console(rank)
    try:
        _train(args, build, launch, run_dir, use_fp16=use_fp16, class_labels=class_labels)
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            raise
        _stop_with_error(stop.code)
    except USER_ERRORS as error:
        _stop_with_error(f"error: {error}")
    except Exception:
        log.exception("training failed")  # a bug: its traceback goes to log.txt as well
        raise SystemExit(1) from None
    finally:
        stop_logging()
    dist_util.cleanup()
    return 0


# What bad flags, files, data or a diverging run raise: reported in one message, without a traceback.
USER_ERRORS = (ValueError, OSError, ArithmeticError)


def _stop_with_error(message):
    """Report `message` on the console and in the run's log.txt, then exit with status 1."""
    log.error("%s", message)
    raise SystemExit(1) from None


def _train(args, build, launch, run_dir, *, use_fp16, class_labels):
    rank, world_size = dist_util.rank(), dist_util.world_size()
    if rank == 0:
        log_to_file(os.path.join(run_dir, "log.txt"))  # the run's messages, metric lines included
        atomic_write_text(os.path.join(run_dir, "args.yaml"), yaml.safe_dump(
            {k: v for k, v in sorted(vars(args).items()) if k != "config"}, sort_keys=True))
    log.info("launcher %s, %d process(es), device %s, run dir %s", launch.launcher, world_size, dist_util.dev(),
             run_dir)

    # The data first: a missing dataset should not wait for the network to be built (minutes for a big one).
    data, error = None, None
    try:
        data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                         class_cond=class_labels, random_flip=args.random_flip, random_crop=args.random_crop,
                         seed=args.seed, shard=rank, num_shards=world_size)
    except USER_ERRORS as exc:
        error = exc
    dist_util.raise_if_any_failed(error)  # every rank stops, none waits for the others in a collective
    log.info("data %s: %s images, %s on this process", args.data_dir, f"{len(data.dataset):,}",
             f"{len(data.local):,}")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    network, objective = build()
    network.to(dist_util.dev())
    log.info("model: %s parameters", f"{sum(p.numel() for p in network.parameters()):,}")
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, objective)
    log.info("training...")
    TrainLoop(
        model=network, diffusion=objective, data=data, batch_size=args.batch_size, microbatch=args.microbatch,
        lr=args.lr, ema_rate=args.ema_rate, log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=use_fp16,
        fp16_scale_growth=args.fp16_scale_growth, schedule_sampler=schedule_sampler,
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        run_dir=run_dir, seed=args.seed, mixed_precision=args.mixed_precision, progress=args.progress,
        device=dist_util.dev(), ema_warmup=args.ema_warmup, class_dropout_prob=args.class_dropout_prob,
        channels_last=args.channels_last,
    ).run_loop()

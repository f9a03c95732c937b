"""Train an ADM diffusion model on an image folder, an .npz batch or the built-in digits.

    python scripts/image_train.py --config configs/digits/model.yaml --config configs/digits/train.yaml \
        --run_dir runs/digits

The release's flags work as they are (MODEL_FLAGS, DIFFUSION_FLAGS, TRAIN_FLAGS of its README). A
`--config FILE.yaml` (flag names as keys; may be given several times, later files win) sets defaults that
flags on the command line override. Runs on one process, or under `mpiexec -n N`, `torchrun
--nproc_per_node N` or `srun`; a run directory that already holds checkpoints is continued from its latest.
"""

import argparse
import logging
import os
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import config, dist_util, logger  # noqa: E402
from guided_diffusion.config import add_flags  # noqa: E402
from guided_diffusion.file_io import atomic_write_text  # noqa: E402
from guided_diffusion.image_datasets import load_data  # noqa: E402
from guided_diffusion.log_setup import log_to_console, log_to_file, stop_logging  # noqa: E402
from guided_diffusion.resample import SAMPLER_NAMES, create_named_schedule_sampler  # noqa: E402
from guided_diffusion.script_util import (args_to_dict, create_model_and_diffusion,  # noqa: E402
                                          model_and_diffusion_defaults)
from guided_diffusion.train_util import MIXED_PRECISION_MODES, TrainLoop  # noqa: E402

log = logging.getLogger("scripts.image_train")

TRAIN_DEFAULTS = dict(
    data_dir="", schedule_sampler="uniform", lr=1e-4, weight_decay=0.0, lr_anneal_steps=0, max_steps=0,
    batch_size=1, microbatch=-1, ema_rate="0.9999", ema_warmup=False, log_interval=10, save_interval=10000, resume_checkpoint="",
    fp16_scale_growth=1e-3, mixed_precision="none", seed=0, run_dir="", random_flip=True, random_crop=False,
    progress=True,
)

HELP = {
    "data_dir": "an image folder (class = file name before the first '_'), an .npz (arr_0 uint8 NHWC, "
                "arr_1 labels) or 'digits' / 'digits:train' (the scikit-learn digits, see guided_diffusion.digits)",
    "schedule_sampler": f"timestep sampler: {' or '.join(SAMPLER_NAMES)}",
    "lr_anneal_steps": "decay the learning rate linearly to 0 over this many steps and stop there (0: constant)",
    "max_steps": "stop after this many steps in all, counting resumed ones (0: no limit)",
    "batch_size": "images per process and step",
    "microbatch": "split each batch into chunks of this size, accumulating gradients (-1: no split)",
    "ema_rate": "EMA decay rate(s), comma-separated",
    "ema_warmup": "decay min(rate, (1 + n) / (10 + n)) after n steps, so a short run's EMA forgets the "
                  "random initialisation",
    "save_interval": "write a checkpoint every this many steps (and at the end)",
    "resume_checkpoint": "a modelNNNNNN.pt to start from (ignored when run_dir already holds checkpoints)",
    "use_fp16": "the release's float16 training: float16 U-Net, float32 master weights, dynamic loss scale",
    "mixed_precision": f"autocast the forward pass: {', '.join(MIXED_PRECISION_MODES)} (fp16 uses a GradScaler)",
    "seed": "seed of the model initialisation, the data order and all training noise",
    "run_dir": "where logs and checkpoints go (default: $OPENAI_LOGDIR, else runs/train-<time>)",
    "random_flip": "flip images horizontally at random (turn off for digits and text)",
    "progress": "show a progress bar on rank 0",
}


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", action="append", default=[],
                        help="YAML file of flag values (repeatable; command-line flags win)")
    defaults = dict(TRAIN_DEFAULTS)
    defaults.update(model_and_diffusion_defaults())
    add_flags(parser, defaults, HELP)
    return parser


def parse_args(argv=None):
    return config.parse_args(create_argparser(), argv)


def main(argv=None):
    args = parse_args(argv)
    launch = dist_util.setup_dist()
    rank, world_size = dist_util.rank(), dist_util.world_size()  # the process group's, however it was set up
    run_dir = args.run_dir or os.environ.get("OPENAI_LOGDIR") or time.strftime("runs/train-%Y%m%d-%H%M%S")
    run_dir = dist_util.broadcast_object(run_dir)
    logger.configure(run_dir, rank=rank)  # the metrics record: progress.csv, log.jsonl
    log_to_console(rank)
    try:
        train(args, launch, run_dir, rank, world_size)
    finally:
        stop_logging()
    dist_util.cleanup()
    return 0  # the exit status of the console script


def train(args, launch, run_dir, rank, world_size):
    if rank == 0:
        log_to_file(os.path.join(run_dir, "log.txt"))  # the run's messages, metric lines included
        atomic_write_text(os.path.join(run_dir, "args.yaml"), yaml.safe_dump(
            {k: v for k, v in sorted(vars(args).items()) if k != "config"}, sort_keys=True))
    log.info(f"launcher {launch.launcher}, {world_size} process(es), device {dist_util.dev()}, run dir {run_dir}")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model.to(dist_util.dev())
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)

    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, random_flip=args.random_flip, random_crop=args.random_crop,
                     seed=args.seed, shard=rank, num_shards=world_size)
    log.info("training...")
    TrainLoop(
        model=model, diffusion=diffusion, data=data, batch_size=args.batch_size, microbatch=args.microbatch,
        lr=args.lr, ema_rate=args.ema_rate, log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth, schedule_sampler=schedule_sampler,
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        run_dir=run_dir, seed=args.seed, mixed_precision=args.mixed_precision, progress=args.progress,
        device=dist_util.dev(), ema_warmup=args.ema_warmup,
    ).run_loop()


if __name__ == "__main__":
    raise SystemExit(main())

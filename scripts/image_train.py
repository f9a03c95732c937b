"""Train an ADM diffusion model on an image folder, an .npz batch or the built-in digits.

    python scripts/image_train.py --config configs/digits/model.yaml --config configs/digits/train.yaml \
        --run_dir runs/digits

The release's flags work as they are (MODEL_FLAGS, DIFFUSION_FLAGS, TRAIN_FLAGS of its README). A
`--config FILE.yaml` (flag names as keys; may be given several times, later files win) sets defaults that
flags on the command line override. Runs on one process, or under `mpiexec -n N`, `torchrun
--nproc_per_node N` or `srun`; a run directory that already holds checkpoints is continued from its latest.
"""

import os
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guided_diffusion import dist_util, logger  # noqa: E402
from guided_diffusion.flags import Flag, FlagGroup, create_parser, parse  # noqa: E402
from guided_diffusion.image_datasets import load_data  # noqa: E402
from guided_diffusion.resample import SAMPLER_NAMES, create_named_schedule_sampler  # noqa: E402
from guided_diffusion.sampling import MODEL_FLAGS  # noqa: E402
from guided_diffusion.script_util import create_model_and_diffusion  # noqa: E402
from guided_diffusion.train_util import MIXED_PRECISION_MODES, TrainLoop  # noqa: E402

TRAIN_FLAGS = FlagGroup("training", [
    Flag("data_dir", "", "an image folder (class = file name before the first '_'), an .npz (arr_0 uint8 NHWC, "
                         "arr_1 labels) or 'digits' / 'digits:train' (the scikit-learn digits, see "
                         "guided_diffusion.digits)"),
    Flag("schedule_sampler", "uniform", f"timestep sampler: {' or '.join(SAMPLER_NAMES)}"),
    Flag("lr", 1e-4),
    Flag("weight_decay", 0.0),
    Flag("lr_anneal_steps", 0, "decay the learning rate linearly to 0 over this many steps and stop there "
                               "(0: constant)"),
    Flag("max_steps", 0, "stop after this many steps in all, counting resumed ones (0: no limit)"),
    Flag("batch_size", 1, "images per process and step"),
    Flag("microbatch", -1, "split each batch into chunks of this size, accumulating gradients (-1: no split)"),
    Flag("ema_rate", "0.9999", "EMA decay rate(s), comma-separated"),
    Flag("ema_warmup", False, "decay min(rate, (1 + n) / (10 + n)) after n steps, so a short run's EMA forgets the "
                              "random initialisation"),
    Flag("log_interval", 10),
    Flag("save_interval", 10000, "write a checkpoint every this many steps (and at the end)"),
    Flag("resume_checkpoint", "", "a modelNNNNNN.pt to start from (ignored when run_dir already holds "
                                  "checkpoints)"),
    Flag("fp16_scale_growth", 1e-3),
    Flag("mixed_precision", "none", f"autocast the forward pass: {', '.join(MIXED_PRECISION_MODES)} (fp16 uses a "
                                    "GradScaler)"),
    Flag("seed", 0, "seed of the model initialisation, the data order and all training noise"),
    Flag("run_dir", "", "where logs and checkpoints go (default: $OPENAI_LOGDIR, else runs/train-<time>)"),
    Flag("random_flip", True, "flip images horizontally at random (turn off for digits and text)"),
    Flag("random_crop", False),
    Flag("progress", True, "show a progress bar on rank 0"),
])
MODEL_TRAIN_FLAGS = MODEL_FLAGS.replace(MODEL_FLAGS["use_fp16"].but(
    help="the release's float16 training: float16 U-Net, float32 master weights, dynamic loss scale"))


def create_argparser():
    return create_parser(__doc__.split("\n\n")[0], [TRAIN_FLAGS, MODEL_TRAIN_FLAGS])


def parse_args(argv=None):
    return parse(create_argparser(), argv)


def main(argv=None):
    args = parse_args(argv)
    launch = dist_util.setup_dist()
    rank, world_size = dist_util.rank(), dist_util.world_size()  # the process group's, however it was set up
    run_dir = args.run_dir or os.environ.get("OPENAI_LOGDIR") or time.strftime("runs/train-%Y%m%d-%H%M%S")
    run_dir = dist_util.broadcast_object(run_dir)
    logger.configure(run_dir, rank=rank)
    if rank == 0:
        with open(os.path.join(run_dir, "args.yaml"), "w") as f:
            yaml.safe_dump({k: v for k, v in sorted(vars(args).items()) if k != "config"}, f, sort_keys=True)
    logger.log(f"launcher {launch.launcher}, {world_size} process(es), device {dist_util.dev()}, "
               f"run dir {run_dir}")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model, diffusion = create_model_and_diffusion(**MODEL_FLAGS.values(args))
    model.to(dist_util.dev())
    logger.log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)

    data = load_data(data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size,
                     class_cond=args.class_cond, random_flip=args.random_flip, random_crop=args.random_crop,
                     seed=args.seed, shard=rank, num_shards=world_size)
    logger.log("training...")
    TrainLoop(
        model=model, diffusion=diffusion, data=data, batch_size=args.batch_size, microbatch=args.microbatch,
        lr=args.lr, ema_rate=args.ema_rate, log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth, schedule_sampler=schedule_sampler,
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        run_dir=run_dir, seed=args.seed, mixed_precision=args.mixed_precision, progress=args.progress,
        device=dist_util.dev(), ema_warmup=args.ema_warmup,
    ).run_loop()
    dist_util.cleanup()
    return 0  # the exit status of the console script


if __name__ == "__main__":
    raise SystemExit(main())

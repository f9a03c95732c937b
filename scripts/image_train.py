"""Train an ADM diffusion model on an image folder, an .npz batch, the built-in digits or Fashion-MNIST.

    python scripts/image_train.py --config configs/digits/model.yaml --config configs/digits/train.yaml \
        --run_dir runs/digits

The release's flags work as they are (MODEL_FLAGS, DIFFUSION_FLAGS, TRAIN_FLAGS of its README). A
`--config FILE.yaml` (flag names as keys; may be given several times, later files win) sets defaults that
flags on the command line override. Runs on one process, or under `mpiexec -n N`, `torchrun
--nproc_per_node N` or `srun`; a run directory that already holds checkpoints is continued from its latest.
"""

from guided_diffusion import config
from guided_diffusion.script_util import args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.training_run import run_training, train_argparser


def create_argparser():
    return train_argparser(__doc__.split("\n\n")[0], model_and_diffusion_defaults())


def main(argv=None):
    args = config.parse_args(create_argparser(), argv)
    return run_training(
        args, lambda: create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys())),
        use_fp16=args.use_fp16, class_labels=args.class_cond)


if __name__ == "__main__":
    raise SystemExit(main())

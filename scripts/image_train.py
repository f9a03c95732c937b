"""Train an ADM diffusion model on an image folder, an .npz batch, the built-in digits or Fashion-MNIST.

    python scripts/image_train.py --config configs/digits/model.yaml --config configs/digits/train.yaml \
        --run_dir runs/digits

The release's flags work as they are (MODEL_FLAGS, DIFFUSION_FLAGS, TRAIN_FLAGS of its README). A
`--config FILE.yaml` (flag names as keys; may be given several times, later files win) sets defaults that
flags on the command line override. Runs on one process, or under `mpiexec -n N`, `torchrun
--nproc_per_node N` or `srun`; a run directory that already holds checkpoints is continued from its latest.
"""

from guided_diffusion.cli.flags import parse
from guided_diffusion.sampling.images import MODEL_FLAGS
from guided_diffusion.script_util import create_model_and_diffusion
from guided_diffusion.training.run import run_training, train_parser

MODEL_TRAIN_FLAGS = MODEL_FLAGS.replace(MODEL_FLAGS["use_fp16"].but(
    help="the release's float16 training: float16 U-Net, float32 master weights, dynamic loss scale"))


def create_argparser():
    return train_parser(__doc__.split("\n\n")[0], [MODEL_TRAIN_FLAGS])


def main(argv=None):
    args = parse(create_argparser(), argv)
    return run_training(args, lambda: create_model_and_diffusion(**MODEL_FLAGS.values(args)),
                        use_fp16=args.use_fp16, class_labels=args.class_cond)


if __name__ == "__main__":
    raise SystemExit(main())

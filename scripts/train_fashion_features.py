"""Train a Fashion-MNIST feature network (evaluations/fashion_features.py or fashion_resnet_features.py) on
the 60,000 training images.

    python scripts/train_fashion_features.py                           # checkpoints/fashion_features.pt
    python scripts/train_fashion_features.py --arch resnet --epochs 5  # checkpoints/fashion_resnet_features.pt

The 10,000 test images are scored at the end only (the schedule is fixed, nothing is chosen on them).
Augmentation: horizontal flips and shifts of up to two pixels, so generated garments that are mirrored or
slightly off-centre are still read well. The weights are stored in float16 (half the size; the features
are computed in float32).
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluations.classifier_backend import shipped_checkpoint  # noqa: E402
from evaluations.fashion_features import INPUT_SIZE, FashionFeatureBackend, preprocess  # noqa: E402
from evaluations.fashion_resnet_features import FashionResNetFeatureBackend  # noqa: E402
from evaluations.feature_training import run_trainer  # noqa: E402
from guided_diffusion.cli.flags import Flag, FlagGroup, check_flags, create_parser, parse  # noqa: E402
from guided_diffusion.data.fashion_mnist import DEBIAN_DIR, load_fashion_split  # noqa: E402
from guided_diffusion.runtime.logs import log_to_console  # noqa: E402
from guided_diffusion.testbeds.feature_trainer_flags import trainer_flags  # noqa: E402

SHIFT = 2
ARCHS = {"plain": FashionFeatureBackend, "resnet": FashionResNetFeatureBackend}  # --arch -> the backend it trains


def augment(x, generator):
    """Random horizontal flip and a shift of up to SHIFT pixels (padding with background -1)."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (SHIFT,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2,), generator=generator).tolist()  # one shift per batch: cheap
    return padded[:, :, dy:dy + INPUT_SIZE, dx:dx + INPUT_SIZE]


def load_sets(args):
    """The (training, test) splits of `args.data_dir` as network inputs and labels."""
    splits = (load_fashion_split(split, args.data_dir) for split in ("train", "test"))
    return tuple((preprocess(images[..., :1]), torch.from_numpy(labels)) for images, labels in splits)


def _known_arch(flag, value, args):
    return None if value in ARCHS else f"{flag} must be {' or '.join(map(repr, ARCHS))}; got {value!r}"


def output_path(args):
    """Where the weights go: --out, else the shipped weights of the --arch's backend."""
    return args.out or shipped_checkpoint(ARCHS[args.arch].name)


TRAINING = trainer_flags(out="", epochs=12, batch_size=128, lr=3e-3, weight_decay=5e-4)
FLAG_GROUPS = [
    FlagGroup("network", [Flag("arch", "plain", "the network: 'plain' (3 conv stages, backend fashion) or 'resnet' "
                                                "(a small ResNet, backend fashion_resnet)", _known_arch)]),
    TRAINING.replace(TRAINING["out"].but(help="where the weights go (default: the --arch's shipped weights, "
                                              "checkpoints/fashion[_resnet]_features.pt; written in one step)")),
    FlagGroup("data", [Flag("data_dir", "", "folder of the Fashion-MNIST idx files (default: $FASHION_MNIST_DIR, "
                                            f"else Debian's {DEBIAN_DIR})")]),
]


def create_argparser():
    return create_parser(__doc__.split("\n\n")[0], FLAG_GROUPS)


def main(argv=None):
    args = parse(create_argparser(), argv)
    log_to_console()
    try:
        check_flags(args, FLAG_GROUPS)
        args.out = output_path(args)
        return run_trainer(args, ARCHS[args.arch].net_class, load_sets, augment, "test", dtype=torch.float16,
                           progress=True)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    raise SystemExit(main())

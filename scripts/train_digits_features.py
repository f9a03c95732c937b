"""Train the digits feature network (evaluations/digits_features.py) on the digits training split.

    python scripts/train_digits_features.py --out checkpoints/digits_features.pt

Only the 1,500 training images are used for fitting; the 297 held-out images are scored at the end (and
are never used to choose anything: the schedule is fixed). Augmentation: random shifts of up to one pixel
and random contrast, so generated digits that are slightly off-centre or dim are still read well.
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluations.digits_features import INPUT_SIZE, DigitsFeatureNet, preprocess  # noqa: E402
from evaluations.feature_training import run_trainer  # noqa: E402
from guided_diffusion.cli.flags import check_flags, create_parser, parse  # noqa: E402
from guided_diffusion.data.digits import load_digits_split  # noqa: E402
from guided_diffusion.runtime.logs import log_to_console  # noqa: E402
from guided_diffusion.testbeds.feature_trainer_flags import trainer_flags  # noqa: E402


def augment(x, generator):
    """Shift by up to one pixel (zero padding = background) and scale the contrast by 0.7..1.0."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (n, 2), generator=generator)
    shifted = torch.stack([padded[i, :, dy:dy + INPUT_SIZE, dx:dx + INPUT_SIZE]
                           for i, (dy, dx) in enumerate(offsets.tolist())])
    contrast = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    return (shifted + 1.0) * contrast - 1.0


def load_sets(args):
    """The (training, held-out) splits as network inputs and labels."""
    splits = (load_digits_split(INPUT_SIZE, split) for split in ("train", "heldout"))
    return tuple((preprocess(images), torch.from_numpy(labels)) for images, labels in splits)


FLAG_GROUPS = [trainer_flags(out="checkpoints/digits_features.pt", epochs=40, batch_size=64, lr=2e-3,
                             weight_decay=1e-4)]


def create_argparser():
    return create_parser(__doc__.split("\n\n")[0], FLAG_GROUPS)


def main(argv=None):
    args = parse(create_argparser(), argv)
    log_to_console()
    try:
        check_flags(args, FLAG_GROUPS)
        return run_trainer(args, DigitsFeatureNet, load_sets, augment, "held-out", log_every=5)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    raise SystemExit(main())

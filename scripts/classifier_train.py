"""Train a noisy-image classifier for classifier guidance (the ADM release's classifier_train.py, noised).

    python scripts/classifier_train.py --config configs/fashion32/classifier.yaml \
        --config configs/fashion32/classifier_train.yaml --run_dir runs/fashion32_classifier

The release's CLASSIFIER_FLAGS and DIFFUSION_FLAGS work as they are; training flags, `--config`, launchers and
resuming are those of scripts/image_train.py. Sample with it through `--classifier_path` and the same flags.
"""

from guided_diffusion.cli.flags import FlagGroup, parse
from guided_diffusion.sampling.images import MODEL_FLAGS
from guided_diffusion.script_util import (
    RELEASE_FLAG_HELP,
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
)
from guided_diffusion.training.classifier_objective import NoisyClassifierObjective
from guided_diffusion.training.run import run_training, train_parser

NETWORK_FLAGS = FlagGroup("classifier and diffusion (the ADM release's flags)", [
    *FlagGroup.from_defaults("", classifier_and_diffusion_defaults(), RELEASE_FLAG_HELP).flags,
    MODEL_FLAGS["num_classes"]])


def main(argv=None):
    args = parse(train_parser(__doc__.split("\n\n")[0], [NETWORK_FLAGS]), argv)

    def build():
        classifier, diffusion = create_classifier_and_diffusion(**NETWORK_FLAGS.values(args))
        return classifier, NoisyClassifierObjective(diffusion)

    return run_training(args, build, use_fp16=args.classifier_use_fp16, class_labels=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a noisy-image classifier for classifier guidance (the ADM release's classifier_train.py, noised).

    python scripts/classifier_train.py --config configs/fashion32/classifier.yaml \
        --config configs/fashion32/classifier_train.yaml --run_dir runs/fashion32_classifier

The release's CLASSIFIER_FLAGS and DIFFUSION_FLAGS work as they are; training flags, `--config`, launchers and
resuming are those of scripts/image_train.py. Sample with it through `--classifier_path` and the same flags.
"""

from guided_diffusion import config
from guided_diffusion.noisy_classifier import NoisyClassifierObjective
from guided_diffusion.script_util import (NUM_CLASSES, args_to_dict, classifier_and_diffusion_defaults,
                                          create_classifier_and_diffusion)
from guided_diffusion.training_run import run_training, train_argparser

NETWORK_DEFAULTS = {**classifier_and_diffusion_defaults(), "num_classes": NUM_CLASSES}


def main(argv=None):
    args = config.parse_args(train_argparser(__doc__.split("\n\n")[0], NETWORK_DEFAULTS), argv)

    def build():
        classifier, diffusion = create_classifier_and_diffusion(**args_to_dict(args, NETWORK_DEFAULTS.keys()))
        return classifier, NoisyClassifierObjective(diffusion)

    return run_training(args, build, use_fp16=args.classifier_use_fp16, class_labels=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The flags of the testbeds' feature-network trainers (scripts/train_digits_features.py and
scripts/train_fashion_features.py), declared once; each script gives its own defaults.

They live here rather than beside the recipe (evaluations/feature_training.py) because the evaluator
package stands apart from the library's command-line layer.
"""

from guided_diffusion.cli.flags import Flag, FlagGroup, at_least


def _positive(flag, value, args):
    return None if value > 0 else f"{flag} must be positive; got {value}"


def trainer_flags(out, epochs, batch_size, lr, weight_decay):
    """The trainer flags, with a script's defaults."""
    return FlagGroup("training", [
        Flag("out", out, "where the weights go (written in one step: a stopped run leaves any older file whole)"),
        Flag("epochs", epochs, "passes over the training images (the one-cycle schedule spans them all)",
             at_least(1)),
        Flag("batch_size", batch_size, "training images per optimiser step", at_least(1)),
        Flag("lr", lr, "peak learning rate of the one-cycle schedule", _positive),
        Flag("weight_decay", weight_decay, "AdamW weight decay", at_least(0)),
        Flag("seed", 0, "seed of the initialisation, the data order and the augmentation"),
    ])

"""Write a training checkpoint's weights for shipping: a plain state_dict, floating-point tensors in float16.

    python scripts/export_weights.py ../runs/fashion32_uncond/ema_0.999_001500.pt checkpoints/fashion32_uncond_ema.pt

Sampling loads the file with the same flags as the training run (weights are cast back to float32).
"""

import logging

import torch

from guided_diffusion.cli.flags import Flag, FlagGroup, create_parser, parse
from guided_diffusion.model.checkpoints import write_weights
from guided_diffusion.runtime.logs import log_to_console

log = logging.getLogger("scripts.export_weights")

EXPORT_FLAGS = FlagGroup("export", [
    Flag("dtype", "float16", "storage type of the floating-point tensors", choices=("float16", "bfloat16", "float32")),
])


def main(argv=None):
    parser = create_parser(__doc__, [EXPORT_FLAGS])
    parser.add_argument("source", help="checkpoint to read (e.g. a run's ema_RATE_STEP.pt)")
    parser.add_argument("destination", help="file to write")
    args = parse(parser, argv)
    log_to_console()
    try:
        count = write_weights(args.source, args.destination, getattr(torch, args.dtype))
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    log.info("wrote %s: %s parameters in %s", args.destination, f"{count:,}", args.dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

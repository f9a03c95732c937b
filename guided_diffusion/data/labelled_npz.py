"""A labelled image split as one .npz batch: `arr_0` uint8 images [N, H, W, 3], `arr_1` int64 labels [N], the
layout the evaluator and `image_datasets.load_data` read. The testbeds' dataset modules write their splits
with it, from Python and from their command lines (`python -m guided_diffusion.data.digits`, `... .fashion`).
"""

import logging
import os

import numpy as np

from guided_diffusion.runtime.files import atomic_write
from guided_diffusion.runtime.logs import log_to_console

log = logging.getLogger(__name__)


def write_labelled_npz(path, images, labels):
    """Write `images` and `labels` to `path` in one step, making its folder if needed; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # compressed: padded grey images shrink about 4x (the shipped Fashion-MNIST test reference is 7 MB)
    atomic_write(path, lambda f: np.savez_compressed(f, arr_0=images, arr_1=labels))
    return path


def write_split_main(parser, argv, out_pattern, write):
    """The command line of a dataset module: `parser` declares the flags that choose the split, this adds
    `--out`, whose default is `out_pattern` filled in with them (e.g. "digits{image_size}_{split}.npz"), and
    `write(path, args)` writes the file."""
    parser.add_argument("--out", default=None, help=f"output file (default: {out_pattern})")
    args = parser.parse_args(argv)
    log_to_console()
    out = args.out or out_pattern.format(**vars(args))
    write(out, args)
    log.info("wrote %s", out)

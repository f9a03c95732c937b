"""Sample a large batch of images from an ADM model, optionally guided by PAG, SAG and/or a classifier.

Reproducible and resumable (see guided_diffusion/sampling/run.py): image i's noise and label come from
(--seed, i) alone, so the samples are the same for any number of processes and any --batch_size; finished
blocks are written atomically to --output_dir, a rerun continues there, and jobs with the same config may
share it. At the end: `samples_{N}x{H}x{W}x3.npz` (the ADM evaluator's format) and a PNG grid.

The release's MODEL_FLAGS and SAMPLE_FLAGS work verbatim. Launch as one process, with
`mpiexec -n N`, `torchrun --nproc_per_node N` or Slurm `srun`. `--config FILE.yaml` sets any flag
(command-line flags win).
"""

from guided_diffusion.cli.flags import parse
from guided_diffusion.sampling.run import create_sampler_parser, run


def create_argparser():
    return create_sampler_parser(__doc__)


def main(argv=None):
    """Console entry point: parse flags (and --config), then sample. Returns the exit status 0; a failure
    raises SystemExit with the message (status 1)."""
    run(parse(create_argparser(), argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

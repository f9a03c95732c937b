"""The release's `classifier_sample.py`: `image_sample.py` with classifier guidance (`--classifier_path`).

Every flag of image_sample.py works here too (PAG / SAG can be combined with the classifier); the release's
commands, e.g. `$MODEL_FLAGS --classifier_scale 1.0 --classifier_path models/256x256_classifier.pt
--model_path models/256x256_diffusion.pt $SAMPLE_FLAGS` plus its CLASSIFIER_FLAGS, run verbatim.
"""

from guided_diffusion.cli.flags import parse
from guided_diffusion.sampling.run import create_sampler_parser, run


def main(argv=None):
    parser = create_sampler_parser(__doc__)
    args = parse(parser, argv)
    if not args.classifier_path:
        parser.error("--classifier_path is required")
    run(args)
    return 0  # the exit status (run() returns the output folder)


if __name__ == "__main__":
    raise SystemExit(main())

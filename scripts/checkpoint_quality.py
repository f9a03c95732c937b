"""Score a training run's checkpoints on unguided samples alone, to choose how long to train.

    python scripts/checkpoint_quality.py --config configs/fashion32/uncond.yaml --backend fashion \
        --reference checkpoints/fashion32_test_ref.npz ../runs/fashion32_uncond/ema_0.999_00{0500,1000,1500}.pt

Every checkpoint samples the same seeds (unguided; DDIM-25 unless --use_ddim False --timestep_respacing 100);
the table gives FID and precision/recall against the reference, each with its bootstrap 95% interval
(--intervals resamples of the batch, the reference held fixed), and the feature network's view of the samples:
its mean confidence (top class probability) and the share of samples it is unsure of (top probability below
0.5), the signature of collapsed structure. A rerun reuses the sample batches already in --output_dir.
"""

import logging
import time
from pathlib import Path

import numpy as np

from evaluations.evaluator import Evaluator
from evaluations.scoring import Scorer
from evaluations.tables import value_cell
from guided_diffusion.cli.flags import Flag, FlagGroup, check_flags, create_parser, parse
from guided_diffusion.runtime.files import atomic_write, atomic_write_text
from guided_diffusion.runtime.logs import log_to_console
from guided_diffusion.sampling.images import MODEL_FLAGS, MODEL_PATH, PRECISION, USE_DDIM, load_model, sample_uint8
from guided_diffusion.sampling.seeding import LabelSource

log = logging.getLogger("scripts.checkpoint_quality")

QUALITY_FLAGS = FlagGroup("quality", [
    MODEL_PATH.but(help="checkpoint scored when none is given as an argument (a sampling config sets it)",
                   check=None),
    Flag("backend", "fashion", "evaluator feature backend"),
    Flag("reference", "", "reference batch (.npz)", lambda flag, value, args: None if value else f"{flag} is required"),
    Flag("resize", False, "resize the samples to the reference images' resolution (bicubic) before scoring; "
                          "without it a reference of another resolution is refused"),
    Flag("num_samples", 200, "samples per checkpoint (the same seeds for all)"),
    Flag("seed", 200000, "base seed (keep it apart from tuning and table seeds)"),
    Flag("batch_size", 100, "images per forward pass"),
    Flag("intervals", 1000, "bootstrap resamples for the 95% intervals (0: none)"),
    USE_DDIM.but(default=True, warn=None),
    PRECISION,
    Flag("output_dir", "outputs/checkpoint_quality", "where the sample batches and table.md go"),
])


def main(argv=None):
    parser = create_parser(__doc__, [QUALITY_FLAGS, MODEL_FLAGS.replace(MODEL_FLAGS["timestep_respacing"].but(
        default="ddim25", help="DDIM steps of the unguided samples"))])
    parser.add_argument("checkpoints", nargs="*", help="checkpoints of one run (e.g. its ema_RATE_STEP.pt files; "
                                                       "default: --model_path)")
    args = parse(parser, argv)
    log_to_console()
    try:
        check_flags(args, [QUALITY_FLAGS])
        table = score(args)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(table)
    return 0


def score(args):
    """Sample and score every checkpoint; returns the Markdown table (also written to output_dir)."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = np.arange(args.num_samples)
    labels = LabelSource(args.seed, args.num_samples, args.num_classes if args.class_cond else None)
    labels = labels.labels(indices) if labels.enabled else None
    scorer = Scorer(Evaluator(args.backend, progress=False, use_cache=False, resize=args.resize), args.reference,
                    intervals=args.intervals)
    lines = ["| checkpoint | FID↓ | precision↑ | recall↑ | mean confidence↑ | share p < 0.5↓ | sampling s |",
             "|---|---|---|---|---|---|---|"]
    for path in args.checkpoints or [args.model_path]:
        sampler = f"{'ddim' if args.use_ddim else 'ddpm'}{args.timestep_respacing.removeprefix('ddim')}"
        batch_path = out / f"{Path(path).stem}_{sampler}_{args.num_samples}.npz"
        seconds_path = batch_path.with_suffix(".seconds")
        if not batch_path.exists():  # a rerun keeps the checkpoints already sampled
            model, diffusion = load_model(args, model_path=path)
            start = time.time()
            images = sample_uint8(model, diffusion, indices, args.batch_size, labels=labels, seed=args.seed,
                                  image_size=args.image_size, use_ddim=args.use_ddim)
            atomic_write_text(seconds_path, f"{time.time() - start:.1f}\n")
            _write_batch(batch_path, images)
        seconds = float(seconds_path.read_text()) if seconds_path.exists() else float("nan")
        metrics = scorer.score(batch_path)
        confidence = scorer.features(batch_path).acts["probs"].max(axis=1)
        cells = [value_cell(m, metrics[m], metrics.get("intervals", {}).get(m)) for m in ("fid", "precision", "recall")]
        lines.append(f"| {Path(path).name} | {' | '.join(cells)} | {confidence.mean():.3f} | "
                     f"{(confidence < 0.5).mean():.3f} | {seconds:.0f} |")
        log.info(lines[-1])
    table = "\n".join(lines) + "\n"
    atomic_write_text(out / "table.md", table)
    return table


def _write_batch(path, images):
    atomic_write(path, lambda f: np.savez(f, arr_0=images))  # whole or absent: an interrupted write is redone


if __name__ == "__main__":
    raise SystemExit(main())

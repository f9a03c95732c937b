"""The whole pipeline on a CPU in minutes: a shipped ADM, unguided vs SAG vs PAG, scored.

Samples the same seeds unguided, with SAG and with PAG (at several scales), writes side-by-side PNG grids
and a Fig. 3-style guidance picture, scores every setting with the testbed's feature network (the same
metrics code as for ImageNet) and prints a Table-1-style table: every value with its bootstrap 95%
interval, and every setting's paired difference from unguided sampling on the same seeds
(evaluations.bootstrap). Everything goes to --output_dir. Testbeds: `fashion` (default; the Fashion-MNIST
ADM against the 10,000 test images) and `digits` (the 16x16 digits ADM).

    make demo                         # = python -m scripts.demo
"""

import json
import time
from pathlib import Path

import numpy as np

from evaluations.evaluator import Evaluator
from evaluations.scoring import Scorer
from guided_diffusion.cli.flags import Flag, FlagGroup, check_flags, create_parser, finite, parse, raising
from guided_diffusion.cli.scales import check_scale
from guided_diffusion.guidance import PerturbedAttentionGuidance
from guided_diffusion.runtime import cpu_allocator
from guided_diffusion.sampling.images import sample_uint8
from guided_diffusion.sampling.pictures import guidance_snapshots, save_guidance_figure
from guided_diffusion.sampling.seeding import ImageNoise
from guided_diffusion.testbeds.demo import TESTBEDS, SettingScores, load_demo_model, side_by_side

DEMO_FLAGS = FlagGroup("demo", [
    Flag("testbed", "fashion", "the shipped model to guide and score", choices=tuple(TESTBEDS)),
    Flag("num_samples", 0, "images per setting (0: the testbed's, 64 for fashion, 297 for digits)"),
    Flag("timestep_respacing", "", "sampler steps, e.g. ddim25 or 100 (default: fashion ddim16, digits ddim25)"),
    Flag("pag_scales", "", "comma-separated PAG scales s (finite; negative values guide the other way; default: "
                           "fashion its Table 1 scale, digits 1,2,3,5)",
         raising(lambda flag, value, args: pag_scales(value) if value else None)),
    Flag("sag_scale", None, "SAG scale s (finite; may be negative; default: fashion its Table 1 scale, digits 1)",
         lambda flag, value, args: None if value is None else finite(flag, value, args), type=float),
    Flag("batch_size", 100, "images per forward pass (does not change the samples)"),
    Flag("seed", 0, "base seed: image i's noise comes from (seed, i)"),
    Flag("output_dir", "outputs/demo", "folder for the grids, pictures, table.md and results.json"),
    Flag("checkpoint", "", "model weights (default: the testbed's shipped EMA)"),
    Flag("intervals", 1000, "bootstrap resamples for the 95%% intervals"),
    Flag("seed_sets", 5, "disjoint seed sets for the paired comparisons"),
    Flag("bootstrap_seed", 0, "seed of the resampled indices"),
])


def pag_scales(text):
    """The --pag_scales values, each a finite number."""
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--pag_scales must be comma-separated numbers, got {text!r}") from None
    return [check_scale(s, "--pag_scales") for s in values]


def main(argv=None):
    """Console entry point: run the demo, exit status 0 (`run(parse(argv))` returns the table)."""
    args = parse(create_parser(__doc__, [DEMO_FLAGS]), argv)
    try:
        check_flags(args, [DEMO_FLAGS])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    run(args)
    return 0


def run(args):
    """The demo with parsed flags; returns the Markdown table."""
    testbed = TESTBEDS[args.testbed]
    respacing = args.timestep_respacing or testbed.respacing
    default_pag_scales, default_sag_scale = testbed.scales()
    rows = testbed.settings(pag_scales(args.pag_scales or default_pag_scales),
                            default_sag_scale if args.sag_scale is None else args.sag_scale)
    cpu_allocator.use_on_cpu()  # the demo runs on the CPU, where this halves the time of large forward passes
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, diffusion, flags = load_demo_model(testbed, respacing, args.checkpoint)
    use_ddim = respacing.startswith("ddim")
    reference = testbed.reference(out, flags["image_size"])
    scores = SettingScores(Scorer(Evaluator(testbed.backend, progress=False, use_cache=False), reference,
                                  intervals=args.intervals, bootstrap_seed=args.bootstrap_seed,
                                  seed_sets=args.seed_sets))
    print(f"{args.testbed} testbed: {testbed.description}; {respacing}", flush=True)

    grids, names = [], []
    indices = np.arange(args.num_samples or testbed.num_samples)
    for name, guidance in rows:
        start = time.time()
        images = sample_uint8(model, diffusion, indices, args.batch_size, seed=args.seed,
                              image_size=flags["image_size"], use_ddim=use_ddim, guidance=guidance)
        seconds = time.time() - start
        path = out / f"samples_{name.replace(' ', '_').replace(',', '').replace('=', '')}.npz"
        np.savez(path, arr_0=images)
        metrics = scores.add(name, path)
        grids.append(images)
        names.append(name)
        print(f"{name:<32} FID {metrics['fid']:7.2f}  KID×10³ {1e3 * metrics['kid']:6.2f}  "
              f"IS {metrics['inception_score']:5.2f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
              f"({seconds:.1f} s sampling)", flush=True)

    table = scores.table()
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(scores.summary(), indent=2))
    side_by_side(grids, names, out / "samples_side_by_side.png")
    noise = ImageNoise(args.seed, list(range(8)), (3, flags["image_size"], flags["image_size"]))
    figure_guidance = next(g for name, g in rows if isinstance(g, PerturbedAttentionGuidance))
    _, snaps = guidance_snapshots(diffusion, model, noise.initial(), figure_guidance,
                                  steps=[diffusion.num_timesteps - 1, diffusion.num_timesteps // 2, 2, 0],
                                  use_ddim=use_ddim, step_noise_fn=noise.step)
    save_guidance_figure(snaps, out / "guidance_pag.png", tile=64)
    print()
    print(table)
    print(f"grids: {out / 'samples_side_by_side.png'}; guidance picture: {out / 'guidance_pag.png'}")
    return table


if __name__ == "__main__":
    raise SystemExit(main())

"""The whole pipeline on a CPU in minutes: the shipped digits ADM, unguided vs SAG vs PAG, scored.

Samples the same seeds unguided, with SAG and with PAG (at several scales and layer sets), writes
side-by-side PNG grids and a Fig. 3-style guidance picture, scores every setting against the held-out
digits with the digits feature network (the same metrics code as for ImageNet) and prints a Table-1-style
table: every value with its bootstrap 95% interval, and every setting's paired difference from unguided
sampling on the same seeds (evaluations.bootstrap). Everything goes to --output_dir.

    make demo                         # = python -m scripts.demo
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from evaluations.bootstrap import SampleBootstrap, compare, intervals
from evaluations.evaluator import Evaluator
from guided_diffusion.checkpoints import load_checkpoint
from guided_diffusion import cpu_allocator
from guided_diffusion.digits import write_digits_npz
from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.image_io import to_uint8
from guided_diffusion.scales import check_scale
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.seeding import ImageNoise
from guided_diffusion.sweep import point_key, results_table
from guided_diffusion.visualize import guidance_snapshots, save_guidance_figure
from scripts.image_sample import batches, sample_images

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "digits" / "model.yaml"
CHECKPOINT = ROOT / "checkpoints" / "digits_adm16_ema.pt"
# The digits model's analogue of the official ADM-256 set: the deepest input block plus the middle block.
DEEP_LAYERS = ["input_blocks.5.1", "middle_block.1"]
DECODER_LAYERS = ["output_blocks.0.1", "output_blocks.1.1"]


def settings(pag_scales, sag_scale):
    """(name, guidance) pairs: unguided, SAG, PAG at each scale on the deep layers, and a layer ablation."""
    rows = [("unguided", None),
            (f"SAG s={sag_scale:g}", SelfAttentionGuidance(scale=sag_scale, blur_sigma=1.0, layer="middle_block.1",
                                                           kernel_size=9))]
    rows += [(f"PAG s={s:g}", PerturbedAttentionGuidance(scale=s, layers=DEEP_LAYERS)) for s in pag_scales]
    rows.append((f"PAG s={pag_scales[len(pag_scales) // 2]:g}, decoder layers",
                 PerturbedAttentionGuidance(scale=pag_scales[len(pag_scales) // 2], layers=DECODER_LAYERS)))
    return rows


def load_demo_model(respacing, checkpoint=CHECKPOINT):
    flags = model_and_diffusion_defaults()
    flags.update({k: v for k, v in yaml.safe_load(MODEL_CONFIG.read_text()).items() if k in flags})
    flags["timestep_respacing"] = respacing
    model, diffusion = create_model_and_diffusion(**flags)
    load_checkpoint(model, str(checkpoint))
    return model.eval(), diffusion, flags


class Scorer:
    """Scores each setting against the held-out digits with bootstrap intervals, and compares every setting
    after the first with the first on the same seeds (all are resampled with the same indices)."""

    def __init__(self, reference_path, n_boot, bootstrap_seed=0, seed_sets=5):
        self.evaluator = Evaluator("digits", progress=False, use_cache=False)
        self.ref_features = self.evaluator.batch_features(reference_path)
        self.reference = self.evaluator.reference(self.ref_features)
        self.n_boot, self.seed, self.seed_sets = n_boot, bootstrap_seed, seed_sets
        self.names, self.boots, self.results, self.comparisons = [], {}, {}, {}

    def add(self, name, path):
        """The metrics (with ``"intervals"``) of the batch at ``path``; compares it with the first batch."""
        features = self.evaluator.batch_features(path)
        metrics = self.evaluator.compute_metrics(self.ref_features, features)
        self.boots[name] = SampleBootstrap(self.reference, features.acts)
        metrics["intervals"] = intervals(metrics, self.boots[name].replicates(self.n_boot, self.seed))
        self.results[point_key({"setting": name})] = {"status": "ok", "metrics": metrics}
        if self.names:
            first = self.names[0]
            self.comparisons[point_key({"setting": name})] = compare(
                self.boots[first], self.boots[name], n_boot=self.n_boot, seed=self.seed,
                num_seed_sets=self.seed_sets, a_metrics=self.metrics(first), b_metrics=metrics)
        self.names.append(name)
        return metrics

    def metrics(self, name):
        return self.results[point_key({"setting": name})]["metrics"]

    def table(self):
        spec = {"points": [{"setting": name} for name in self.names], "seed_sets": self.seed_sets}
        return results_table(spec, self.results, self.comparisons)

    def summary(self):
        """{setting: metrics, intervals and (after the first) the paired comparison with the first}."""
        out = {}
        for name in self.names:
            out[name] = dict(self.metrics(name))
            comparison = self.comparisons.get(point_key({"setting": name}))
            if comparison is not None:
                out[name][f"vs_{self.names[0]}"] = {k: comparison[k] for k in ("difference", "difference_intervals",
                                                                                  "seed_sets")}
        return out


def side_by_side(grids, names, path, ncols=8, rows=4, scale=3, per_line=4):
    """One PNG of labelled grids (the first ncols * rows images of every setting), `per_line` settings a line."""
    tiles = []
    rows = min(rows, -(-len(grids[0]) // ncols))
    for images in grids:
        count, size = ncols * rows, images.shape[1]
        images = np.concatenate([images[:count], np.zeros((max(0, count - len(images)), size, size, 3), np.uint8)])
        block = images.reshape(rows, ncols, size, size, 3).transpose(0, 2, 1, 3, 4)
        tiles.append(block.reshape(rows * size, ncols * size, 3))
    height, width = tiles[0].shape[0] * scale, tiles[0].shape[1] * scale
    gap, header = 6, 14
    lines = -(-len(tiles) // per_line)
    canvas = Image.new("RGB", (min(len(tiles), per_line) * (width + gap), lines * (header + height + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, name) in enumerate(zip(tiles, names)):
        left, top = (i % per_line) * (width + gap), (i // per_line) * (header + height + gap)
        canvas.paste(Image.fromarray(tile).resize((width, height), Image.NEAREST), (left, top + header))
        draw.text((left + 2, top + 1), name, fill="black")
    canvas.save(path)


def main(argv=None):
    """Console entry point: run the demo, exit status 0 (`run(parse(argv))` returns the table)."""
    args = parse(argv)
    try:
        rows = settings(pag_scales(args), check_scale(args.sag_scale, "--sag_scale"))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    run(args, rows)
    return 0


def pag_scales(args):
    """The --pag_scales values, each a finite number."""
    try:
        values = [float(s) for s in args.pag_scales.split(",")]
    except ValueError:
        raise ValueError(f"--pag_scales must be comma-separated numbers, got {args.pag_scales!r}") from None
    return [check_scale(s, "--pag_scales") for s in values]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=297, help="images per setting (held-out set: 297)")
    parser.add_argument("--timestep_respacing", default="ddim25", help="sampler steps, e.g. ddim25 or 100")
    parser.add_argument("--pag_scales", default="1,2,3,5",
                        help="comma-separated PAG scales s (finite; negative values guide the other way)")
    parser.add_argument("--sag_scale", type=float, default=1.0, help="SAG scale s (finite; may be negative)")
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--checkpoint", default=str(CHECKPOINT), help="digits ADM weights (default: the shipped EMA)")
    parser.add_argument("--intervals", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed_sets", type=int, default=5, help="disjoint seed sets for the paired comparisons")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the resampled indices")
    return parser.parse_args(argv)


def run(args, rows=None):
    """The demo with parsed flags; returns the Markdown table. `rows`: settings() of the flags."""
    rows = rows or settings(pag_scales(args), check_scale(args.sag_scale, "--sag_scale"))
    cpu_allocator.use_on_cpu()  # the demo runs on the CPU, where this halves the time of large forward passes
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, diffusion, flags = load_demo_model(args.timestep_respacing, args.checkpoint)
    use_ddim = args.timestep_respacing.startswith("ddim")
    reference = out / "digits16_heldout.npz"
    write_digits_npz(str(reference), image_size=flags["image_size"], split="heldout")
    scorer = Scorer(reference, args.intervals, args.bootstrap_seed, args.seed_sets)

    grids, names = [], []
    indices = np.arange(args.num_samples)
    for name, guidance in rows:
        start = time.time()
        images = np.concatenate([
            to_uint8(sample_images(model, diffusion, batch, seed=args.seed, image_size=flags["image_size"],
                                   use_ddim=use_ddim, guidance=guidance)).numpy()
            for batch in batches(indices, args.batch_size)])
        seconds = time.time() - start
        path = out / f"samples_{name.replace(' ', '_').replace(',', '').replace('=', '')}.npz"
        np.savez(path, arr_0=images)
        metrics = scorer.add(name, path)
        grids.append(images)
        names.append(name)
        print(f"{name:<32} FID {metrics['fid']:7.2f}  KID×10³ {1e3 * metrics['kid']:6.2f}  "
              f"IS {metrics['inception_score']:5.2f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
              f"({seconds:.1f} s sampling)", flush=True)

    table = scorer.table()
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(scorer.summary(), indent=2))
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

"""The CPU demo's parts: the settings it compares on the shipped digits ADM, the model loader, scoring
with bootstrap intervals and paired differences, and the side-by-side picture (`scripts/demo.py` runs them).
"""

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from evaluations.bootstrap import SampleBootstrap, compare, intervals
from evaluations.evaluator import Evaluator

from .checkpoints import load_checkpoint
from .guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
from .script_util import create_model_and_diffusion, model_and_diffusion_defaults
from .sweep import point_key, results_table

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

"""The CPU demo's parts: its two testbeds (the Fashion-MNIST ADM and the small digits ADM, both shipped), the
settings it compares on them, the model loader, its table of scores (from the one `evaluations.scoring.Scorer`:
bootstrap intervals and paired differences), and the side-by-side picture (`scripts/demo.py` runs them).

The Fashion-MNIST settings come from configs/fashion32/methods/, read when they are asked for, not on import.
"""

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.data.digits import write_digits_npz
from guided_diffusion.diffusion.factory import model_and_diffusion_defaults
from guided_diffusion.experiments.sweep import point_key, results_table
from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.sampling.images import MODEL_FLAGS, load_model

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# The digits model's analogue of the official ADM-256 set: the deepest input block plus the middle block.
DEEP_LAYERS = ["input_blocks.5.1", "middle_block.1"]
DECODER_LAYERS = ["output_blocks.0.1", "output_blocks.1.1"]


def settings(pag_scales, sag_scale):
    """The digits testbed's (name, guidance) pairs: unguided, SAG, PAG at each scale on the deep layers, and a
    layer ablation."""
    rows = [("unguided", None),
            (f"SAG s={sag_scale:g}", SelfAttentionGuidance(scale=sag_scale, blur_sigma=1.0, layer="middle_block.1",
                                                           kernel_size=9))]
    rows += [(f"PAG s={s:g}", PerturbedAttentionGuidance(scale=s, layers=DEEP_LAYERS)) for s in pag_scales]
    rows.append((f"PAG s={pag_scales[len(pag_scales) // 2]:g}, decoder layers",
                 PerturbedAttentionGuidance(scale=pag_scales[len(pag_scales) // 2], layers=DECODER_LAYERS)))
    return rows


def fashion_method(name):
    """The flags of configs/fashion32/methods/`name`.yaml: the Fashion-MNIST testbed's SAG or PAG, as its
    Table 1 rows configure them."""
    return load_config(CONFIGS / "fashion32" / "methods" / f"{name}.yaml")


def fashion_settings(pag_scales, sag_scale):
    """The Fashion-MNIST testbed's pairs: unguided, SAG, and PAG at each of `pag_scales`, on the layers and
    with the blur of configs/fashion32/methods/ (its Table 1 rows' settings)."""
    sag_flags, pag_flags = fashion_method("sag"), fashion_method("pag")
    sag = SelfAttentionGuidance(scale=sag_scale, blur_sigma=sag_flags["sag_blur_sigma"],
                                layer=sag_flags["sag_layer"], map_heads=sag_flags["sag_map_heads"])
    rows = [("unguided", None), (f"SAG s={sag_scale:g}", sag)]
    rows += [(f"PAG s={s:g}", PerturbedAttentionGuidance(scale=s, layers=pag_flags["pag_layers"]))
             for s in pag_scales]
    return rows


def _fashion_scales():
    return f"{fashion_method('pag')['pag_scale']:g}", fashion_method("sag")["sag_scale"]


def _digits_reference(out, image_size):
    return Path(write_digits_npz(str(out / "digits16_heldout.npz"), image_size=image_size, split="heldout"))


@dataclasses.dataclass(frozen=True)
class Testbed:
    """A shipped model and what the demo compares on it (the flags' empty defaults take these values)."""

    sample_config: Path  # a sampling config: the model flags and model_path
    backend: str  # the evaluator backend whose features score the samples
    reference: Callable  # (output folder, image size) -> the reference batch
    settings: Callable  # (pag_scales, sag_scale) -> [(name, guidance or None)]
    num_samples: int
    respacing: str
    scales: Callable  # () -> (default --pag_scales text, default --sag_scale)
    description: str


TESTBEDS = {
    "fashion": Testbed(CONFIGS / "fashion32" / "uncond.yaml", "fashion",
                       lambda out, size: ROOT / "checkpoints" / "fashion32_test_ref.npz", fashion_settings,
                       num_samples=64, respacing="ddim16", scales=_fashion_scales,
                       description="the unconditional Fashion-MNIST ADM against the 10,000 test images"),
    "digits": Testbed(CONFIGS / "digits" / "sample.yaml", "digits", _digits_reference, settings,
                      num_samples=297, respacing="ddim25", scales=lambda: ("1,2,3,5", 1.0),
                      description="the 16x16 digits ADM against the 297 held-out digits"),
}


def load_demo_model(testbed, respacing, checkpoint=""):
    """The testbed's model (its shipped weights, or `checkpoint`'s), its diffusion at `respacing` and its flags."""
    config = load_config(testbed.sample_config)
    flags = {**model_and_diffusion_defaults(), **{k: v for k, v in config.items() if k in MODEL_FLAGS.names},
             "timestep_respacing": respacing}
    model, diffusion = load_model({**flags, "precision": "fp32"}, model_path=checkpoint or ROOT / config["model_path"])
    return model, diffusion, flags


class SettingScores:
    """The demo's table: each setting's samples scored by `scorer` (an `evaluations.scoring.Scorer` with
    intervals), and every setting after the first compared with the first on the same seeds."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.names, self.paths, self.results, self.comparisons = [], {}, {}, {}

    def add(self, name, path):
        """The metrics (with ``"intervals"``) of the batch at ``path``; compares it with the first batch."""
        metrics = self.scorer.score(path)
        key = point_key({"setting": name})
        self.results[key] = {"status": "ok", "metrics": metrics}
        if self.names:
            self.comparisons[key] = self.scorer.compare(self.paths[self.names[0]], path)
        self.names.append(name)
        self.paths[name] = path
        return metrics

    def metrics(self, name):
        return self.results[point_key({"setting": name})]["metrics"]

    def table(self):
        spec = {"points": [{"setting": name} for name in self.names], "seed_sets": self.scorer.seed_sets,
                "baseline_note": "every setting against the first"}
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

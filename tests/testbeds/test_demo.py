"""The CPU demo end to end on a reduced count: table shape, finite numbers, pictures written."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from evaluations.evaluator import Evaluator
from evaluations.scoring import Scorer
from guided_diffusion.sampling.pictures import COLOUR_BAR, COLUMNS
from guided_diffusion.testbeds.demo import TESTBEDS

from programs import REPO, assert_ok, child_env, run_script


def assert_same_numbers(actual, expected, rel=1e-6):
    """Equal structures whose numbers agree to `rel` (the same keys, lengths and strings)."""
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same_numbers(actual[key], expected[key], rel)
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_numbers(a, e, rel)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=1e-12)
    else:
        assert actual == expected


@pytest.mark.e2e
@pytest.mark.parametrize("testbed, size, scales", [("fashion", 32, [3.0]), ("digits", 16, [1.0, 3.0])])
def test_demo_runs_and_reports_every_setting(tmp_path, testbed, size, scales):
    # the installed console script (one intra-op thread), which must exit with status 0
    assert_ok(run_script("pag-demo", "--testbed", testbed, "--num_samples", "12", "--timestep_respacing", "ddim4",
                         "--pag_scales", ",".join(f"{s:g}" for s in scales), "--sag_scale", "1", "--batch_size", "6",
                         "--output_dir", tmp_path, "--intervals", "30", "--seed_sets", "3"))
    table = (tmp_path / "table.md").read_text()
    names = [name for name, _ in TESTBEDS[testbed].settings(scales, 1.0)]
    blocks = table.strip().split("\n\n")  # values, the caption, the differences from unguided
    values, caption, differences = blocks[0], blocks[-2], blocks[-1]
    assert f"baseline (setting={names[0]}; every setting against the first)" in caption, caption
    lines = values.splitlines()
    assert lines[0] == "| setting | FID↓ | sFID↓ | KID×10³↓ | IS↑ | Precision↑ | Recall↑ |"
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == names
    diff_lines = differences.splitlines()
    assert diff_lines[0].startswith("| setting | ΔFID↓ |")
    assert [line.split(" | ")[0].lstrip("| ") for line in diff_lines[2:]] == names[1:]  # each vs unguided
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == names
    for metrics in results.values():
        assert all(math.isfinite(metrics[k]) for k in ("fid", "sfid", "kid", "inception_score", "precision", "recall"))
        for key, (low, high) in metrics["intervals"].items():
            assert low <= metrics[key] <= high
    for name in names[1:]:
        versus = results[name]["vs_unguided"]
        assert versus["difference"]["fid"] == results[name]["fid"] - results["unguided"]["fid"]
        assert versus["seed_sets"]["sizes"] == [4, 4, 4]
    if testbed == "digits":  # the numbers are the one scorer's (adm-evaluate's)
        scorer = Scorer(Evaluator("digits", progress=False, use_cache=False), tmp_path / "digits16_heldout.npz",
                        intervals=30, seed_sets=3)
        # to rounding: the demo ran with one BLAS thread, this process may have more (sums in another order)
        assert_same_numbers(json.loads(json.dumps(scorer.score(tmp_path / "samples_PAG_s3.npz"))),
                            {k: v for k, v in results["PAG s=3"].items() if k != "vs_unguided"})
        comparison = scorer.compare(tmp_path / "samples_unguided.npz", tmp_path / "samples_PAG_s3.npz")
        assert_same_numbers(json.loads(json.dumps(comparison["difference_intervals"])),
                            results["PAG s=3"]["vs_unguided"]["difference_intervals"])
    # Same seeds for every setting: guidance changes the images, scale 0 would not.
    unguided = np.load(tmp_path / "samples_unguided.npz")["arr_0"]
    pag = np.load(tmp_path / "samples_PAG_s3.npz")["arr_0"]
    assert unguided.shape == pag.shape == (12, size, size, 3) and (unguided != pag).any()
    # The side-by-side picture holds each setting's own samples (4 settings a line).
    canvas = np.asarray(Image.open(tmp_path / "samples_side_by_side.png").convert("RGB"))
    lines, per_line = -(-len(names) // 4), min(len(names), 4)
    assert canvas.shape == (lines * (HEADER + 2 * size * SCALE + GAP), per_line * (8 * size * SCALE + GAP), 3)
    for name, images in (("unguided", unguided), ("PAG s=3", pag)):
        assert np.array_equal(grid_tile(canvas, names.index(name), size), grid_of(images)), name
    # The guidance picture: a row per recorded step, newest first, and PAG's guidance is not zero.
    figure = Image.open(tmp_path / "guidance_pag.png")
    ranges = json.loads(figure.info["guidance_range"])
    assert len(ranges) >= 3 and [r["t"] for r in ranges] == sorted((r["t"] for r in ranges), reverse=True)
    assert figure.size == (70 + 64 * len(COLUMNS) + COLOUR_BAR, 18 + 64 * len(ranges))
    assert all(r["max"] > 0 for r in ranges)


IMPORT_THEN_SETTINGS = """
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import guided_diffusion.testbeds.demo as demo
at_import = list(opened)
print(json.dumps(at_import), flush=True)
rows = demo.TESTBEDS["fashion"].settings([2.0], 1.5)
defaults = demo.TESTBEDS["fashion"].scales()
print(json.dumps({"after": opened[len(at_import):], "defaults": defaults, "pag_layers": rows[2][1].layers}))
"""


def test_the_demo_reads_the_method_files_when_its_settings_are_asked_for_not_on_import():
    result = subprocess.run([sys.executable, "-c", IMPORT_THEN_SETTINGS], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    methods = str(REPO / "configs" / "fashion32" / "methods")
    at_import = json.loads(result.stdout.splitlines()[0])
    assert [p for p in at_import if p.startswith(methods)] == []
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[1])
    assert {p for p in found["after"] if p.startswith(methods)} == {f"{methods}/pag.yaml", f"{methods}/sag.yaml"}
    from guided_diffusion.cli.yaml_config import load_config

    pag, sag = (load_config(f"{methods}/{name}.yaml") for name in ("pag", "sag"))
    assert found["defaults"] == [f"{pag['pag_scale']:g}", sag["sag_scale"]]
    assert found["pag_layers"] == pag["pag_layers"]


# guided_diffusion.testbeds.demo.side_by_side's layout: 8 samples a row, 2 rows (12 samples), drawn 3x under a
# 14-pixel header, 6 apart.
SCALE, HEADER, GAP = 3, 14, 6


def grid_of(images, ncols=8, rows=2):
    """The first ncols * rows samples as one image, row by row, black where there are fewer."""
    size = images.shape[1]
    padded = np.concatenate([images[:ncols * rows], np.zeros((ncols * rows - len(images), size, size, 3), np.uint8)])
    return padded.reshape(rows, ncols, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * size, ncols * size, 3)


def grid_tile(canvas, index, size, ncols=8, rows=2, per_line=4):
    """The grid of setting `index` in the side-by-side picture, back at the samples' resolution."""
    width, height = ncols * size * SCALE, rows * size * SCALE
    left = (index % per_line) * (width + GAP)
    top = (index // per_line) * (HEADER + height + GAP) + HEADER
    return canvas[top:top + height:SCALE, left:left + width:SCALE]

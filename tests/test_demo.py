"""The CPU demo end to end on a reduced count: table shape, finite numbers, pictures written."""

import json
import math

import numpy as np
from PIL import Image

from console import assert_ok, run_script
from guided_diffusion.demo import settings


def test_demo_runs_and_reports_every_setting(tmp_path):
    # the installed console script (one intra-op thread), which must exit with status 0
    assert_ok(run_script("pag-demo", "--num_samples", "12", "--timestep_respacing", "ddim4", "--pag_scales", "1,3",
                         "--batch_size", "6", "--output_dir", tmp_path, "--intervals", "30", "--seed_sets", "3"))
    table = (tmp_path / "table.md").read_text()
    names = [name for name, _ in settings([1.0, 3.0], 1.0)]
    blocks = table.strip().split("\n\n")  # values, the caption, the differences from unguided
    values, differences = blocks[0], blocks[-1]
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
    # Same seeds for every setting: guidance changes the images, scale 0 would not.
    unguided = np.load(tmp_path / "samples_unguided.npz")["arr_0"]
    pag = np.load(tmp_path / "samples_PAG_s3.npz")["arr_0"]
    assert unguided.shape == pag.shape == (12, 16, 16, 3) and (unguided != pag).any()
    assert Image.open(tmp_path / "samples_side_by_side.png").size[0] > 0
    assert Image.open(tmp_path / "guidance_pag.png").size[1] > 0

"""A 2 x 2 sweep on the shipped digits model: results file, table, no recomputation, failures recorded."""

import json
import os
from pathlib import Path

import yaml

from guided_diffusion.sweep import expand_points, load_spec, point_key, read_results, results_table, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_digits_sweep_records_skips_and_survives_a_failing_point(tmp_path):
    base = yaml.safe_load((ROOT / "configs/digits/sample.yaml").read_text())
    base.update(num_samples=8, batch_size=8, timestep_respacing="ddim3", progress=False)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "t", "base": str(tmp_path / "base.yaml"), "reference": str(tmp_path / "heldout.npz"),
        "prepare_reference": ["python", "-m", "guided_diffusion.digits", "--image_size", "16", "--split", "heldout",
                              "--out", "{reference}"],
        "evaluator_args": ["--backend", "digits", "--no_cache", "--quiet"],
        "output_dir": str(tmp_path / "runs"),
        "grid": {"pag_scale": [1.0, 3.0], "pag_layers": [["middle_block.1"], ["input_blocks.5.1"]]},
        "points": [{"pag_scale": 1.0, "pag_layers": ["input_blocks.99.1"]}],  # fails: no such block
    }, sort_keys=False))
    spec = load_spec(spec_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = []
    results = run_sweep(spec, log=logs.append, env=env)

    points = expand_points(spec)
    assert len(points) == 5
    ok = [r for r in results.values() if r["status"] == "ok"]
    failed = [r for r in results.values() if r["status"] == "failed"]
    assert len(ok) == 4 and len(failed) == 1
    assert "input_blocks.99.1" in failed[0]["error"]
    for record in ok:
        assert set(record["metrics"]) >= {"fid", "sfid", "inception_score", "precision", "recall"}
    # Different settings, different samples: the metrics are not all the same.
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in ok}) == 4

    table = results_table(spec, results).splitlines()
    assert table[0] == "| pag_scale | pag_layers | FID↓ | sFID↓ | IS↑ | Precision↑ | Recall↑ |"
    assert len(table) == 2 + 5 and "failed" in table[-1]
    assert sum(line.count("**") for line in table) >= 2 * 5  # the best value of each metric is bold

    # A rerun recomputes nothing that finished; only the failed point is tried again.
    stamps = {r["key"]: os.path.getmtime(r["samples"]) for r in ok}
    logs.clear()
    again = run_sweep(spec, log=logs.append, env=env)
    assert sum("done, skipped" in line for line in logs) == 4
    assert {r["key"]: os.path.getmtime(r["samples"]) for r in ok} == stamps
    assert {k: r["metrics"] for k, r in again.items() if r["status"] == "ok"} == {r["key"]: r["metrics"] for r in ok}
    assert len(read_results(spec["output_dir"] + "/results.jsonl")) == 5
    assert point_key(points[0]) in again

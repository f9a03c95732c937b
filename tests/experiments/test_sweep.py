"""A 2 x 2 sweep on the shipped digits model: results file, table, no recomputation, failures recorded."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from evaluations.tables import differences_table
from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.data.digits import load_digits_split
from guided_diffusion.experiments.sweep import (
    expand_points,
    load_spec,
    planned_commands,
    point_commands,
    point_key,
    read_results,
    results_table,
    run_comparisons,
    run_sweep,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_digits_sweep_records_skips_and_survives_a_failing_point(tmp_path, caplog):
    base = load_config(ROOT / "configs/digits/sample.yaml")
    base.update(num_samples=8, batch_size=8, timestep_respacing="ddim3", progress=False)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "t", "base": str(tmp_path / "base.yaml"), "reference": str(tmp_path / "heldout.npz"),
        "prepare_reference": ["python", "-m", "guided_diffusion.data.digits", "--image_size", "16", "--split",
                              "heldout",
                              "--out", "{reference}"],
        "evaluator_args": ["--backend", "digits", "--no_cache", "--quiet"],
        "output_dir": str(tmp_path / "runs"),
        "grid": {"pag_scale": [1.0, 3.0], "pag_layers": [["middle_block.1"], ["input_blocks.5.1"]]},
        "points": [{"pag_scale": 1.0, "pag_layers": ["input_blocks.99.1"]}],  # fails: no such block
        "baseline": {"pag_scale": 3.0, "pag_layers": ["middle_block.1"]},
        "intervals": 40, "seed_sets": 2,
    }, sort_keys=False))
    spec = load_spec(spec_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    caplog.set_level(logging.INFO, logger="guided_diffusion.experiments.sweep")
    results = run_sweep(spec, env=env)

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

    for record in ok:  # every point is evaluated with intervals
        assert set(record["metrics"]["intervals"]) >= {"fid", "kid", "precision", "recall"}
    comparisons = run_comparisons(spec, results, env=env)
    base_key = point_key({"pag_scale": 3.0, "pag_layers": ["middle_block.1"]})
    assert base_key not in comparisons and len(comparisons) == 3  # the other finished points
    for key, comparison in comparisons.items():
        assert comparison["seed_sets"]["sizes"] == [4, 4]
        a, b = comparison["a"], comparison["b"]
        assert a["fid"] == results[base_key]["metrics"]["fid"] and b["fid"] == results[key]["metrics"]["fid"]
        assert comparison["difference"]["fid"] == b["fid"] - a["fid"]

    lines = results_table(spec, results, comparisons).splitlines()
    values, differences = lines[:7], lines[lines.index("| pag_scale | pag_layers | ΔFID↓ | ΔsFID↓ | ΔKID×10³↓ | ΔIS↑ "
                                                       "| ΔPrecision↑ | ΔRecall↑ |"):]
    assert values[0] == "| pag_scale | pag_layers | FID↓ | sFID↓ | KID×10³↓ | IS↑ | Precision↑ | Recall↑ |"
    # the explicit (failing) point is the first row, then the grid's
    assert "failed" in values[2] and values[3].count("[") == 6  # value [low, high] in every metric cell
    assert not any("**" in line for line in values)  # nothing is marked as "best"
    assert len(differences) == 2 + 4 and "failed" in differences[2]  # every point but the baseline
    assert all(line.count("(") >= 6 for line in differences[3:6])  # seed-set tallies (w/2)
    assert "3.0 | middle_block.1" not in "\n".join(differences)
    # a difference is bold exactly when its interval excludes zero
    order = ["fid", "sfid", "kid", "inception_score", "precision", "recall"]
    for comparison in comparisons.values():
        cells = differences_table(["x"], [(["x"], comparison, "")]).splitlines()[2].strip("| ").split(" | ")[1:]
        for metric, cell in zip(order, cells):
            low, high = comparison["difference_intervals"][metric]
            assert cell.startswith("**") == (low > 0 or high < 0), (metric, cell)

    # A rerun recomputes nothing that finished; only the failed point is tried again.
    stamps = {r["key"]: os.path.getmtime(r["samples"]) for r in ok}
    caplog.clear()
    again = run_sweep(spec, env=env)
    assert sum("done, skipped" in line for line in caplog.messages) == 4
    assert {r["key"]: os.path.getmtime(r["samples"]) for r in ok} == stamps
    assert {k: r["metrics"] for k, r in again.items() if r["status"] == "ok"} == {r["key"]: r["metrics"] for r in ok}
    assert len(read_results(spec["output_dir"] + "/results.jsonl")) == 5
    assert point_key(points[0]) in again
    # comparisons are reused while the sample files are unchanged
    caplog.clear()
    assert run_comparisons(spec, again, env=env) == comparisons and not caplog.messages
    # a dry run lists the failed point's sampling and evaluation, then a comparison for each point but the baseline
    commands = planned_commands(spec)
    assert len(commands) == 2 + 4 and all(failed[0]["key"] in c for c in commands[:2])
    assert "scripts.image_sample" in commands[0] and "evaluations.evaluator" in commands[1]
    assert all("--compare" in c for c in commands[2:])


def test_sweep_baseline_must_name_a_point(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"base": "b.yaml", "reference": "r.npz", "grid": {"pag_scale": [1.0, 2.0]},
                                         "baseline": {"pag_scale": 0.0}}))
    with pytest.raises(ValueError, match="matches no point"):
        load_spec(spec_path)
    spec_path.write_text(yaml.safe_dump({"base": "b.yaml", "reference": "r.npz", "grid": {"pag_scale": [1.0]},
                                         "intervals": 1}))
    with pytest.raises(ValueError, match="'intervals' must be 0 or at least 2"):
        load_spec(spec_path)


def test_table1_sweep_runs_each_row_from_its_own_file(tmp_path):
    """The Table 1 spec names the row files; each point's config is that file's composed flags, exactly."""
    spec = load_spec(ROOT / "configs/sweeps/imagenet256/table1.yaml")
    spec["output_dir"] = str(tmp_path)
    points = expand_points(spec)
    assert [p["label"] for p in points] == ["uncond ADM", "uncond + SAG", "uncond + PAG", "cond ADM", "cond + SAG",
                                            "cond + PAG"]
    for point in points:
        sample, _, samples = point_commands(spec, point, tmp_path / point_key(point))
        written = yaml.safe_load((tmp_path / point_key(point) / "config.yaml").read_text())
        assert written == load_config(ROOT / point["config"])
        assert samples.name == "samples_50000x256x256x3.npz"
    assert written["class_cond"] is True and written["pag_scale"] == 3.0


def test_spec_with_a_missing_row_file_is_refused(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"reference": "r.npz", "points": [{"config": "configs/table1/nope.yaml"}]}))
    with pytest.raises(ValueError, match="nope.yaml, which does not exist"):
        load_spec(spec_path)


@pytest.mark.e2e
def test_sweep_scores_through_the_scorer_which_refuses_another_resolution(tmp_path):
    """Each point is scored, with intervals, by adm-evaluate (evaluations.scoring.Scorer), which checks the
    samples against the reference: 16x16 digits against 32x32 ones fail the point with the fix, instead of a
    score across resolutions."""
    base = {**load_config(ROOT / "configs/digits/sample.yaml"), "num_samples": 4, "batch_size": 4,
            "timestep_respacing": "ddim2", "progress": False}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    np.savez(tmp_path / "ref32.npz", load_digits_split(32, "heldout")[0][:40])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "base": str(tmp_path / "base.yaml"), "reference": str(tmp_path / "ref32.npz"),
        "evaluator_args": ["--backend", "digits", "--no_cache", "--quiet"], "output_dir": str(tmp_path / "runs"),
        "points": [{"pag_scale": 0.0}], "intervals": 20}))
    spec = load_spec(spec_path)
    _, scoring, _ = point_commands(spec, spec["points"][0], tmp_path / "probe")
    assert scoring[1:3] == ["-m", "evaluations.evaluator"] and "--intervals" in scoring
    (record,) = run_sweep(spec, env={**os.environ, "OMP_NUM_THREADS": "1"}).values()
    assert record["status"] == "failed"
    assert "the samples are 16x16" in record["error"] and "--resize" in record["error"], record["error"]

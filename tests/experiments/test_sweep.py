"""A 2 x 2 sweep on the shipped digits model: results file, table, no recomputation, failures recorded."""

import json
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from evaluations.tables import differences_table
from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.data.digits import load_digits_split
from guided_diffusion.experiments.sweep import (
    REPLICATES_FOLDER,
    expand_points,
    load_spec,
    metric_figure,
    planned_commands,
    point_commands,
    point_key,
    read_results,
    results_table,
    run_comparisons,
    run_sweep,
    sampling_record,
    scoring_command,
    scoring_options,
)
from guided_diffusion.sampling.shard_timing import SamplingTime, sampling_time

from programs import run_script

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
    assert values[0] == ("| pag_scale | pag_layers | s/image | CPU share | FID↓ | sFID↓ | KID×10³↓ | IS↑ "
                         "| Precision↑ | Recall↑ |")
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


def test_a_row_sampled_on_shared_cpu_cores_is_flagged(caplog):
    """The sampler's own time, and on the CPU its share of its threads' time: where any shard got under 0.8 of
    it, the sweep warns that the row's s/image overstates its cost and names those shards, even when the row's
    mean share looks clean; on a GPU (no share) and for untimed shards it says nothing."""
    caplog.set_level(logging.WARNING, logger="guided_diffusion.experiments.sweep")
    assert sampling_record(SamplingTime(120.04, 0.994, ()), 130.0) == {"sample_seconds": 120.0, "cpu_share": 0.99}
    assert not caplog.messages
    record = sampling_record(SamplingTime(240.0, 0.5, ("shard_a.npz", "shard_b.npz")), 250.0)
    assert record == {"sample_seconds": 240.0, "cpu_share": 0.5}
    assert len(caplog.messages) == 1 and "50% of its threads' CPU time" in caplog.messages[0]
    assert "2 shard(s) got under 80% (shard_a.npz, shard_b.npz)" in caplog.messages[0]
    caplog.clear()
    sampling_record(SamplingTime(300.0, 0.94, ("shard_c.npz",)), 310.0)  # one contended shard among clean ones
    assert len(caplog.messages) == 1 and "94%" in caplog.messages[0] and "(shard_c.npz)" in caplog.messages[0]
    caplog.clear()
    assert sampling_record(SamplingTime(12.0, None, ()), 20.0) == {"sample_seconds": 12.0}  # a GPU's shards
    assert sampling_record(None, 20.04) == {"sample_seconds": 20.0}  # an older version's: the wall time
    assert not caplog.messages


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


def test_a_finished_point_whose_files_changed_is_refused_not_reused(tmp_path):
    method = tmp_path / "method.yaml"
    method.write_text(yaml.safe_dump({"include": str(ROOT / "configs/digits/sample.yaml"), "pag_scale": 2.0,
                                      "pag_layers": ["middle_block.1"], "output_dir": "samples/a"}))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "t", "base": str(method), "reference": str(tmp_path / "ref.npz"), "output_dir": str(tmp_path / "runs"),
        "points": [{"label": "unguided", "pag_scale": 0.0}, {"label": "PAG"}], "baseline": "unguided"}))
    spec = load_spec(spec_path)
    # both points finished with the files as they are: a rerun has nothing to sample
    for point in expand_points(spec):
        point_commands(spec, point, tmp_path / "runs" / point_key(point))  # writes the config the point ran with
        with open(tmp_path / "runs" / "results.jsonl", "a") as results:
            results.write(json.dumps({"key": point_key(point), "overrides": point, "status": "ok"}) + "\n")
    assert not any("image_sample" in c for c in planned_commands(spec))
    # where the samples go is not a setting
    method.write_text(method.read_text().replace("samples/a", "samples/b"))
    assert not any("image_sample" in c for c in planned_commands(spec))
    # the method file's scale is retuned: the PAG row's results are stale, the unguided row's (its own override
    # holds the scale) are not; both the run and the dry run refuse, naming the point, the flag and the fix
    method.write_text(method.read_text().replace("pag_scale: 2.0", "pag_scale: 0.5"))
    for attempt in (planned_commands, run_sweep):
        with pytest.raises(ValueError) as refused:
            attempt(spec)
        message = str(refused.value)
        assert "1 finished point(s)" in message and '"PAG"' in message and '"unguided"' not in message
        assert "pag_scale: 2.0 then, 0.5 now" in message and "--output_dir" in message
    # the command line: one error line and a non-zero exit, the dry run and another feature space included
    for extra in ((), ("--dry_run",), ("--backend", "digits")):
        refused = run_script("pag-sweep", spec_path, *extra)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert "error: sweep 't': 1 finished point(s)" in refused.stderr and "pag_scale: 2.0 then" in refused.stderr


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


def test_a_score_is_stamped_with_every_option_of_its_command_but_the_paths():
    """The stamp that decides whether a finished score is reused holds every option its command passes but the
    file paths and the replicate cache (so another spelling of the output folder reuses it), and changes with
    any option that changes the result."""
    spec = {"reference": "ref.npz", "output_dir": "/runs/a", "evaluator_args": ["--backend", "fashion"],
            "intervals": 200, "bootstrap_seed": 3, "seed_sets": 4}
    for compare in (False, True):
        command = scoring_command(spec, "b.npz", "out.json", "a.npz" if compare else None)
        paths = ["ref.npz", "a.npz", "--compare", "b.npz"] if compare else ["ref.npz", "b.npz"]
        cache = ["--bootstrap_cache", "/runs/a/" + REPLICATES_FOLDER]
        assert command[3:] == paths + ["--json", "out.json"] + scoring_options(spec, compare) + cache
        assert scoring_options({**spec, "output_dir": "runs/b"}, compare) == scoring_options(spec, compare)
        for change in ({"bootstrap_seed": 4}, {"intervals": 100}, {"evaluator_args": ["--backend", "digits"]}):
            assert scoring_options({**spec, **change}, compare) != scoring_options(spec, compare), change
    assert "--seed_sets" in scoring_options(spec, True) and "--seed_sets" not in scoring_options(spec, False)
    without = {**spec, "intervals": 0}  # no intervals: no statistics options and no cache
    assert scoring_options(without, True) == ["--backend", "fashion"]
    assert "--bootstrap_cache" not in scoring_command(without, "b.npz", "out.json", "a.npz")


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


@pytest.mark.e2e
def test_rows_are_compared_with_a_second_baseline_and_timed_per_image(tmp_path):
    """`also_compare_with: [PAG]`: every row gets its paired difference from unguided and from PAG (own files,
    own table section), and the table gives each row's sampling seconds per image; run as pag-sweep."""
    base = {**load_config(ROOT / "configs/digits/sample.yaml"), "num_samples": 8, "batch_size": 8,
            "timestep_respacing": "ddim3", "progress": False}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    np.savez(tmp_path / "ref.npz", load_digits_split(16, "heldout")[0][:60])
    points = [{"label": "unguided"}, {"label": "PAG s=1", "pag_scale": 1.0}, {"label": "PAG s=3", "pag_scale": 3.0}]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "base": str(tmp_path / "base.yaml"), "reference": str(tmp_path / "ref.npz"),
        "evaluator_args": ["--backend", "digits", "--no_cache", "--quiet"], "output_dir": str(tmp_path / "runs"),
        "points": points, "baseline": "unguided", "also_compare_with": ["PAG s=1"], "intervals": 20,
        "seed_sets": 2}))
    result = run_script("pag-sweep", spec_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    out, keys = tmp_path / "runs", [point_key(p) for p in points]
    results = read_results(out / "results.jsonl")
    fid = {key: results[key]["metrics"]["fid"] for key in keys}
    for key in (keys[0], keys[2]):  # against PAG s=1: its own files, the difference from PAG's FID
        against_pag = json.loads((out / key / f"compare_vs_{keys[1]}.json").read_text())
        assert against_pag["difference"]["fid"] == pytest.approx(fid[key] - fid[keys[1]], rel=1e-9, abs=1e-9)
    against_unguided = json.loads((out / keys[1] / "compare.json").read_text())
    assert against_unguided["difference"]["fid"] == pytest.approx(fid[keys[1]] - fid[keys[0]], rel=1e-9, abs=1e-9)
    assert not (out / keys[1] / f"compare_vs_{keys[1]}.json").exists()  # PAG is not compared with itself

    table = (out / "table.md").read_text()
    captions = [line for line in table.splitlines() if line.startswith("Difference from the baseline")]
    assert len(captions) == 2 and "(unguided;" in captions[0] and "(PAG s=1;" in captions[1]
    header = table.splitlines()[0]
    assert header.startswith("| label | s/image | CPU share | FID↓")
    for key, point in zip(keys, points):
        record = results[key]
        assert 0 < record["sample_seconds"] < record["seconds"] and record["num_samples"] == 8
        # the sampler's own time, from the shards (as for samples that other jobs or machines made)
        timed = sampling_time(Path(record["samples"]).parent, 8)
        assert record["sample_seconds"] == round(timed.seconds, 1) and record["cpu_share"] == round(timed.cpu_share, 2)
        assert 0 < record["cpu_share"] < 2  # CPU time over the threads' wall time (a little over 1 is possible)
        (row,) = [line for line in table.splitlines()[:5] if line.startswith(f"| {point['label']} |")]
        assert row.split(" | ")[1:3] == [f"{record['sample_seconds'] / 8:.3f}", f"{record['cpu_share']:.2f}"]
    # a dry run lists both comparisons of each row (2 against unguided, 2 against PAG)
    planned = planned_commands(load_spec(spec_path))
    assert sum("--compare" in c for c in planned) == 4
    # Each batch is resampled once: its replicates, kept in the sweep's folder, serve its own intervals and
    # every comparison; the stamps that decide whether a score is reused do not name that folder.
    assert all(f"--bootstrap_cache {out / REPLICATES_FOLDER}" in c for c in planned if "--compare" in c)
    assert len(list((out / REPLICATES_FOLDER).glob("*.npz"))) == 3
    stamp = json.loads((out / keys[1] / "compare.key.json").read_text())
    assert "--intervals" in stamp["command"] and "--bootstrap_cache" not in stamp["command"]

    # The same folder by another name (here a link; a relative path for an absolute one alike): finished scores
    # are the same files' and are reused, not recomputed.
    (tmp_path / "alias").symlink_to(out)
    rerun = run_script("pag-sweep", spec_path, "--output_dir", tmp_path / "alias", timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "comparing" not in rerun.stderr and "done, skipped" in rerun.stderr

    # Another feature space: the stored samples scored again (here by the same network, so the numbers must
    # agree), nothing sampled, every file with its own suffix.
    stamps = {key: Path(results[key]["samples"]).stat().st_mtime_ns for key in keys}
    again = run_script("pag-sweep", spec_path, "--backend", "digits", timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {key: Path(results[key]["samples"]).stat().st_mtime_ns for key in keys} == stamps
    for key in keys:
        assert (out / key / "evaluate_digits.log").exists()
        rescored = json.loads((out / key / "metrics_digits.json").read_text())
        assert rescored["fid"] == pytest.approx(fid[key], rel=1e-9)
    assert (out / keys[2] / f"compare_vs_{keys[1]}_digits.json").exists()
    assert (out / "table_digits.md").read_text() == table


def test_labelled_rows_are_plotted_as_separate_categories_whose_labels_do_not_overlap():
    labels = ["unguided", "CFG + PAG, CFG s = 0.5", "APG on CFG, s = 0.5", "auto (early checkpoint)"]
    values = [(label, 60.0 + i, (55.0 + i, 66.0 + i)) for i, label in enumerate(labels)]
    fig = metric_figure({"FID": values}, "label", "FID (lower is better)")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_yticklabels()] == labels  # the sweep's order, top to bottom
    boxes = [t.get_window_extent() for t in ax.get_yticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    data_line = ax.containers[0].lines[0]
    assert data_line.get_linestyle() == "None"  # no line joins one method to the next
    assert list(data_line.get_xdata()) == [60.0, 61.0, 62.0, 63.0]
    plt.close(fig)


def test_a_numeric_setting_is_plotted_as_a_line_over_it():
    values = [(s, 70.0 - s, (65.0 - s, 75.0 - s)) for s in (0.1, 0.5, 2.0)]
    fig = metric_figure({"FID": values}, "pag_scale", "FID")
    data_line = fig.axes[0].containers[0].lines[0]
    assert data_line.get_linestyle() == "-"
    assert list(data_line.get_xdata()) == [0.1, 0.5, 2.0]
    assert fig.axes[0].get_xlabel() == "pag_scale"
    plt.close(fig)

"""Paired sweeps (`pair_by`: each point against the baseline point of its own checkpoint and sampler) and the
gain map drawn from them, run as users run them: `pag-sweep`, then `pag-gain-map`."""

import json
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import scripts.gain_map
from guided_diffusion.cli.yaml_config import load_config
from guided_diffusion.data.digits import write_digits_npz
from guided_diffusion.experiments.child_signals import StopSignals
from guided_diffusion.experiments.gain_map import checkpoint_step, map_rows, sampler_name
from guided_diffusion.experiments.sweep import (
    baseline_for,
    expand_points,
    load_spec,
    planned_commands,
    point_config,
    point_key,
)

from programs import REPO, run_script

MAP_SPEC = REPO / "configs/sweeps/fashion32/pag_gain_map.yaml"


def paired_spec(tmp_path, points=None, baseline=None, grid=None):
    spec = {"name": "paired", "base": "configs/digits/sample.yaml", "reference": str(tmp_path / "ref.npz"),
            "output_dir": str(tmp_path / "runs"), "pair_by": ["model_path", "timestep_respacing"],
            "baseline": baseline if baseline is not None else {"pag_scale": 0.0}}
    spec["grid"] = grid or {"model_path": ["a/model000100.pt", "a/model000200.pt"],
                            "timestep_respacing": ["ddim3", "ddim5"], "pag_scale": [0.0, 1.0, 2.0]}
    if points:
        spec["points"] = points
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_each_point_is_paired_with_the_baseline_of_its_own_group(tmp_path):
    spec = load_spec(paired_spec(tmp_path))
    for point in expand_points(spec):
        base = baseline_for(spec, point)
        assert base["pag_scale"] == 0.0
        assert (base["model_path"], base["timestep_respacing"]) == (point["model_path"], point["timestep_respacing"])
    # one comparison per guided point, each naming its own group's unguided samples
    comparisons = [c for c in planned_commands(spec) if "--compare" in c]
    assert len(comparisons) == 8
    for point in expand_points(spec):
        if point["pag_scale"]:
            own, base = point_key(point), point_key(baseline_for(spec, point))
            [command] = [c for c in comparisons if f"/{own}/compare.json" in c]
            assert f"/{base}/samples/" in command


def test_a_point_without_a_baseline_in_its_group_is_refused_before_anything_runs(tmp_path):
    lonely = {"model_path": "a/model000300.pt", "timestep_respacing": "ddim3", "pag_scale": 1.0}
    with pytest.raises(ValueError, match=r"has no baseline of its own.*model000300.*pag_scale\": 0.0"):
        load_spec(paired_spec(tmp_path, points=[lonely]))
    with pytest.raises(ValueError, match="'pair_by' needs a 'baseline' given as overrides"):
        load_spec(paired_spec(tmp_path, baseline="unguided"))


def test_the_shipped_map_spec_pairs_every_guided_point_with_its_checkpoints_unguided_run():
    spec = load_spec(MAP_SPEC)
    points = expand_points(spec)
    cells = set()
    for point in points:
        config = point_config(spec, point)
        base = point_config(spec, baseline_for(spec, point))
        assert config["seed"] == 100000 and config["num_samples"] == 500  # the tuning seeds, never the table's
        assert base["pag_scale"] == 0.0 and base["model_path"] == config["model_path"]
        assert sampler_name(base) == sampler_name(config)
        cells.add((sampler_name(config), checkpoint_step(config["model_path"]), config["pag_scale"]))
    steps = sorted({step for _, step, _ in cells})
    assert len(steps) >= 4 and steps[-1] == 9400
    for sampler in ("DDIM-25", "DDPM-100"):
        assert {(sampler, step, s) for step in steps for s in (0.0, 1.0, 2.0)} <= cells
        assert {(sampler, 9400, s) for s in (0.1, 0.25, 0.5, 3.0)} <= cells
    assert {("DDPM-250", 9400, s) for s in (0.0, 1.0, 2.0)} <= cells
    assert len(cells) == len(points)


def test_sampler_names_and_steps_come_from_the_flags_and_file_names():
    assert sampler_name({"timestep_respacing": "ddim25", "use_ddim": True}) == "DDIM-25"
    assert sampler_name({"timestep_respacing": "100", "use_ddim": False}) == "DDPM-100"
    assert checkpoint_step("../runs/x/ema_0.999_009400.pt") == 9400
    with pytest.raises(ValueError, match="cannot read a training step"):
        checkpoint_step("checkpoints/fashion32_uncond_ema.pt")


@pytest.mark.slow
def test_gain_map_from_a_paired_sweep_on_two_checkpoints_and_two_samplers(tmp_path):
    """Two copies of the digits model under step names, DDIM-3 and DDPM-4, s = 0 and 1: pag-sweep, then
    pag-gain-map; each map row is its own group's paired comparison, and a second feature space rescoring writes
    its own files from the same samples."""
    for step in (100, 200):
        shutil.copy(REPO / "checkpoints/digits_adm16_ema.pt", tmp_path / f"model{step:06d}.pt")
    write_digits_npz(str(tmp_path / "ref.npz"), image_size=16, split="heldout")
    base = load_config(REPO / "configs/digits/sample.yaml")
    base.update(num_samples=8, batch_size=8, progress=False)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    ddpm = tmp_path / "ddpm4.yaml"
    ddpm.write_text("timestep_respacing: '4'\nuse_ddim: false\n")
    ddim = tmp_path / "ddim3.yaml"
    ddim.write_text("timestep_respacing: ddim3\nuse_ddim: true\n")
    spec_path = tmp_path / "map.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "map", "reference": str(tmp_path / "ref.npz"), "output_dir": str(tmp_path / "runs"),
        "evaluator_args": ["--backend", "digits", "--no_cache", "--quiet"], "intervals": 20, "seed_sets": 2,
        "baseline": {"pag_scale": 0.0}, "pair_by": ["model_path", "config"],
        "grid": {"model_path": [str(tmp_path / "model000100.pt"), str(tmp_path / "model000200.pt")],
                 "config": [[str(tmp_path / "base.yaml"), str(ddim)], [str(tmp_path / "base.yaml"), str(ddpm)]],
                 "pag_scale": [0.0, 1.0]},
    }, sort_keys=False))
    swept = run_script("pag-sweep", spec_path, timeout=1200)
    assert swept.returncode == 0, swept.stderr[-3000:]
    drawn = run_script("pag-gain-map", spec_path, timeout=600)
    assert drawn.returncode == 0, drawn.stderr[-3000:]

    out = tmp_path / "runs"
    spec = load_spec(spec_path)
    results = {json.loads(line)["key"]: json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()}
    table = (out / "map.md").read_text().splitlines()
    assert table[0].startswith("| sampler | step | s | unguided FID↓ | FID↓ | ΔFID")
    body = table[2:]
    assert [line.split(" | ")[:3] for line in body] == [["| DDIM-3", "100", "1"], ["| DDIM-3", "200", "1"],
                                                        ["| DDPM-4", "100", "1"], ["| DDPM-4", "200", "1"]]
    guided = [p for p in expand_points(spec) if p["pag_scale"]]
    comparisons = {point_key(p): json.loads((out / point_key(p) / "compare.json").read_text()) for p in guided}
    rows = map_rows(spec, comparisons, "pag_scale")
    assert len(rows) == 4
    for row, line in zip(rows, body):
        point = next(p for p in guided if checkpoint_step(p["model_path"]) == row.step
                     and sampler_name(point_config(spec, p)) == row.sampler)
        own, unguided = results[point_key(point)], results[point_key(baseline_for(spec, point))]
        # the row's two FIDs are its own point's and its own group's unguided point's
        assert row.value("b")[0] == pytest.approx(own["metrics"]["fid"], rel=1e-12)
        assert row.value("a")[0] == pytest.approx(unguided["metrics"]["fid"], rel=1e-12)
        assert f"{row.difference()[0]:+.2f}" in line
    # DDPM and DDIM differ, so the groups' baselines differ: a map that paired everything with one baseline
    # would repeat one unguided FID
    assert len({row.value("a")[0] for row in rows}) >= 2
    png = (out / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    rescored = run_script("pag-gain-map", spec_path, "--backend", "digits", timeout=600)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    for key, comparison in comparisons.items():
        again = json.loads((out / key / "compare_digits.json").read_text())
        assert np.isclose(again["difference"]["fid"], comparison["difference"]["fid"], rtol=1e-9)
    assert (out / "map_digits.md").read_text() == (out / "map.md").read_text()


def test_gain_map_refuses_an_unpaired_sweep(tmp_path):
    spec = tmp_path / "plain.yaml"
    spec.write_text(yaml.safe_dump({"base": "configs/digits/sample.yaml", "reference": str(tmp_path / "r.npz"),
                                    "grid": {"pag_scale": [0.0, 1.0]}}))
    result = run_script("pag-gain-map", spec, timeout=120)
    assert result.returncode == 1 and "is not a paired sweep" in result.stderr and "Traceback" not in result.stderr


def test_map_spec_checkpoint_paths_name_the_run_folder_outside_the_work_tree():
    spec = yaml.safe_load(Path(MAP_SPEC).read_text())
    assert all(path.startswith("../runs/") for path in spec["grid"]["model_path"])


def test_a_stop_signal_during_the_gain_maps_comparisons_ends_it_as_the_sweep_ends(tmp_path, monkeypatch, caplog):
    """pag-gain-map runs evaluator children too (comparisons in another feature space): under the same stop
    signals as pag-sweep, a SIGTERM while they run ends it with one warning and exit status 143."""

    def comparing(spec, results, name):
        assert StopSignals.active is not None, "the comparisons run without the stop signals"
        signal.raise_signal(signal.SIGTERM)  # caught and held for the next evaluator child
        StopSignals.active.run([sys.executable, "-c", "pass"])  # as each comparison's evaluator is started
        return {}

    monkeypatch.setattr(scripts.gain_map, "run_comparisons", comparing)
    status = scripts.gain_map.main([str(paired_spec(tmp_path))])
    assert status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored on the way out
    assert not (tmp_path / "runs" / "map.md").exists()
    assert len([r for r in caplog.records if "stopped by SIGTERM" in r.getMessage()]) == 1, caplog.text

"""Sweep specs are checked before anything runs: unknown keys and flags are refused with a suggestion, value
types are checked, and the default baseline does not depend on the order of `points:` and `grid:` in the file.
Run through the installed `pag-sweep --dry_run`, as a user would."""

import subprocess
from pathlib import Path

import pytest

from guided_diffusion.experiments.sweep import (
    baseline_point,
    check_point_flags,
    expand_points,
    load_spec,
    point_key,
    results_table,
)

from programs import REPO, child_env, command, run_script

BASE = "configs/digits/sample.yaml"


def write_spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("{out}", str(tmp_path / "runs")))
    return path


def dry_run(spec_path):
    return run_script("pag-sweep", spec_path, "--dry_run", timeout=120)


def assert_refused(result, *parts):
    """Exit status 1, one line on stderr naming every part, no traceback, no commands printed."""
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.e2e
def test_misspelt_grid_is_refused_instead_of_running_one_point(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
points:
  - {{pag_scale: 0.0}}
gird:
  pag_scale: [1.0, 2.0, 3.0]
""")
    assert_refused(dry_run(spec), "'gird'", "did you mean grid?")


@pytest.mark.e2e
def test_misspelt_intervals_is_refused_instead_of_using_the_default(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
grid: {{pag_scale: [1.0, 2.0]}}
intervls: 0
""")
    assert_refused(dry_run(spec), "'intervls'", "did you mean intervals?")


@pytest.mark.e2e
def test_flag_typo_in_the_grid_fails_the_dry_run_naming_flag_and_point(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
grid:
  pag_scael: [1.0, 2.0]
""")
    line = assert_refused(dry_run(spec), "'pag_scael'", "did you mean pag_scale", '{"pag_scael": 1.0}')
    assert "grid" in line


@pytest.mark.e2e
def test_flag_typo_in_a_point_fails_the_dry_run_naming_the_point(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
points:
  - {{label: unguided, pag_scale: 0.0}}
  - {{label: "PAG s=2", pag_scael: 2.0}}
""")
    assert_refused(dry_run(spec), "'pag_scael'", "did you mean pag_scale", "PAG s=2")


@pytest.mark.e2e
def test_flag_typo_in_a_points_config_file_fails_the_dry_run(tmp_path):
    """The point's flags are its config files' keys too, checked as the sampler will check them."""
    config = tmp_path / "row.yaml"
    config.write_text(f"include: {REPO / BASE}\nnum_sampels: 10\n")
    spec = write_spec(tmp_path, f"""
reference: r.npz
output_dir: {{out}}
points:
  - {{label: row, config: {config}}}
""")
    assert_refused(dry_run(spec), "'num_sampels'", "did you mean num_samples", "row", str(config))


@pytest.mark.e2e
def test_bad_flag_value_in_a_point_fails_the_dry_run(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
points:
  - {{pag_scale: lots}}
  - {{num_samples: 0}}
""")
    assert_refused(dry_run(spec), "pag_scale", "'lots'")
    spec.write_text(spec.read_text().replace("{pag_scale: lots}", "{pag_scale: 1.0}"))
    assert_refused(dry_run(spec), '{"num_samples": 0}', "--num_samples")


@pytest.mark.e2e
def test_a_valid_spec_still_prints_its_commands(tmp_path):
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
intervals: 0
grid: {{pag_scale: [1.0, 2.0]}}
""")
    result = dry_run(spec)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 4  # two points, each sampled and evaluated


@pytest.mark.parametrize("text, parts", [
    ("grid: {pag_scale: 1.0}", ["grid", "pag_scale", "list"]),
    ("grid: [pag_scale, 1.0]", ["'grid'", "mapping"]),
    ("grid: {pag_scale: []}", ["grid", "pag_scale", "empty"]),
    ("points: {pag_scale: 1.0}", ["'points'", "list"]),
    ("points: []", ["'grid' or a 'points'"]),
    ("points: [pag_scale]", ["points", "mapping"]),
    ("points: [{label: [a, b], pag_scale: 1.0}]", ["label", "string"]),
    ("points: [{pag_scale: 1.0}]\nbaseline: [pag_scale, 1.0]", ["'baseline'"]),
    ("points: [{pag_scale: 1.0}]\nevaluator_args: --quiet", ["'evaluator_args'", "list"]),
    ("points: [{pag_scale: 1.0}]\nlaunch: [mpiexec, -n, '8']", ["'launch'", "string"]),
    ("points: [{pag_scale: 1.0}]\nreference: [r.npz]", ["'reference'", "string"]),
])
def test_value_types_are_checked(tmp_path, text, parts):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base: {BASE}\nreference: r.npz\n{text}\n")
    with pytest.raises(ValueError) as error:
        load_spec(spec)
    for part in parts:
        assert part in str(error.value)


GRID_FIRST = """
base: configs/digits/sample.yaml
reference: r.npz
grid:
  pag_scale: [1.0, 2.0]
points:
  - {pag_scale: 0.0}
"""
POINTS_FIRST = """
base: configs/digits/sample.yaml
reference: r.npz
points:
  - {pag_scale: 0.0}
grid:
  pag_scale: [1.0, 2.0]
"""


def test_default_baseline_is_the_first_explicit_point_in_either_order(tmp_path):
    baselines, orders = [], []
    for name, text in (("grid_first", GRID_FIRST), ("points_first", POINTS_FIRST)):
        (tmp_path / f"{name}.yaml").write_text(text)
        spec = load_spec(tmp_path / f"{name}.yaml")
        baselines.append(baseline_point(spec))
        orders.append(expand_points(spec))
    assert baselines == [{"pag_scale": 0.0}] * 2
    assert orders[0] == orders[1] == [{"pag_scale": 0.0}, {"pag_scale": 1.0}, {"pag_scale": 2.0}]
    # with a grid alone, the first grid point
    (tmp_path / "grid.yaml").write_text(GRID_FIRST.split("points:")[0])
    assert baseline_point(load_spec(tmp_path / "grid.yaml")) == {"pag_scale": 1.0}


def _comparison():
    metrics = {"fid": 1.0, "sfid": 1.0, "kid": 0.01, "inception_score": 2.0, "precision": 0.5, "recall": 0.5}
    return {"a": metrics, "b": metrics, "difference": dict.fromkeys(metrics, 0.1),
            "difference_intervals": dict.fromkeys(metrics, [-1.0, 1.0])}


@pytest.mark.parametrize("extra, rule", [("", "the first of the spec's `points`"),
                                         ("baseline: {pag_scale: 0.0}\n", "the spec's `baseline`"),
                                         ("baseline_note: the unguided row\n", "; the unguided row)")])
def test_table_states_the_baseline_and_the_rule_that_chose_it(tmp_path, extra, rule):
    (tmp_path / "spec.yaml").write_text(POINTS_FIRST + extra)
    spec = load_spec(tmp_path / "spec.yaml")
    metrics = _comparison()["a"]
    results, comparisons = {}, {}
    for point in expand_points(spec):
        results[point_key(point)] = {"status": "ok", "metrics": metrics}
        if point != {"pag_scale": 0.0}:
            comparisons[point_key(point)] = _comparison()
    table = results_table(spec, results, comparisons)
    (caption,) = [line for line in table.splitlines() if line.startswith("Difference from the baseline")]
    assert "pag_scale=0.0" in caption and rule in caption, caption
    rows = [line for line in table.split("\n\n")[0].splitlines()[2:]]
    assert rows[0].startswith("| 0.0 |")  # the baseline is the first row


def test_shipped_specs_pass_the_schema_and_the_flag_checks():
    paths = sorted(Path(REPO / "configs/sweeps").glob("*/*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        spec = load_spec(path)
        check_point_flags(spec)
        assert expand_points(spec) and baseline_point(spec), path



@pytest.mark.e2e
def test_dry_run_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`pag-sweep SPEC --dry_run | head -1`: the reader closes the pipe first; no BrokenPipeError traceback."""
    spec = write_spec(tmp_path, f"""
base: {BASE}
reference: r.npz
output_dir: {{out}}
grid:
  pag_scale: [0.0, 1.0, 2.0]
""")
    process = subprocess.Popen(command("pag-sweep", spec, "--dry_run"), cwd=REPO, env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the program has printed anything (its start alone takes a second)
    errors = process.stderr.read()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in errors and "BrokenPipe" not in errors, errors

"""The benchmark scripts run and print their tables (tiny sizes, in a child process)."""

import subprocess
import sys

import pytest

from programs import REPO, child_env


def _run_benchmark(script, *args, timeout=300):
    """The stdout of `benchmarks/<script>` run with `args` in a child process, which must exit 0."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _table_cells(stdout):
    """The cells of each row of the Markdown tables in `stdout` (headers included, separators not)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("| ")]


def _table_rows(stdout):
    """{first cell: the other cells} for each table row in `stdout`."""
    return {cells[0]: cells[1:] for cells in _table_cells(stdout)}


@pytest.mark.slow
def test_adm_release_speed_measures_ours_without_a_release():
    stdout = _run_benchmark("adm_release_speed.py", "--train_batch", "2", "--sample_batch", "2", "--repeats", "1",
                            "--warmup", "0")
    rows = _table_rows(stdout)
    expected = ["train step, fp32", "train step, bf16 autocast (release: whole step under autocast)",
                "sample DDIM-25, fp32", "sample DDIM-25, bf16 autocast"]
    assert [name for name in rows if name != "task"] == expected
    for name in expected:
        ours, release, ratio = rows[name]
        assert float(ours) > 0, name
        assert release == ratio == "—", name  # no release given: nothing to compare with
    assert "release: not measured" in stdout


@pytest.mark.slow
def test_training_speed_prints_every_variant_against_bf16():
    variants = ["fp32", "bf16 + channels_last"]
    stdout = _run_benchmark("training_speed.py", "--train_batch", "2", "--forward_batch", "2", "--repeats", "1",
                            "--warmup", "0", "--variants", *variants)
    rows = [cells for cells in _table_cells(stdout) if cells[0] != "task"]
    assert [(task, variant) for task, variant, *_ in rows] == [
        (task, variant) for task in ("train", "forward") for variant in ["bf16", *variants]]
    for task, variant, speed, ratio, first, diff in rows:
        assert float(speed) > 0 and ratio.endswith("x") and float(first) > 0, (task, variant)
        if variant == "bf16":
            assert ratio == "1.00x" and float(diff) == 0.0  # the reference row
        elif task == "forward":  # other arithmetic: within bf16's rounding of the trained model's output, not equal
            assert 0.0 < float(diff) < 0.1, (task, variant, diff)


@pytest.mark.slow
def test_guidance_methods_cost_counts_each_methods_network_rows_per_step():
    rows = _table_rows(_run_benchmark("guidance_methods_cost.py", "--methods", "pag", "cg", "--batch", "2", "--steps",
                                      "2", "--repeats", "1", "--warmup", "0", timeout=600))
    # unguided: one prediction per image and step; PAG adds its perturbed copy in the same call, CG the
    # classifier's pass in a call of its own
    expected = {"unguided (uncond)": "1.00", "unguided (cond)": "1.00", "pag": "2.00", "cg": "2.00"}
    assert {name: cells[1] for name, cells in rows.items() if name != "method"} == expected
    expected = {"unguided (uncond)": "1.00", "unguided (cond)": "1.00", "pag": "1.00", "cg": "2.00"}
    assert {name: cells[2] for name, cells in rows.items() if name != "method"} == expected
    for name, (model, _, _, seconds, ratio) in ((n, c) for n, c in rows.items() if n != "method"):
        assert float(seconds) > 0 and ratio.endswith("x"), name
        assert model == ("cond" if name in ("cg", "unguided (cond)") else "uncond"), name
    assert rows["unguided (uncond)"][4] == "1.00x"


@pytest.mark.slow
def test_comparison_speed_reads_replicates_back_with_identical_results():
    stdout = _run_benchmark("comparison_speed.py", "--n", "60", "--n_ref", "80", "--n_boot", "10", "--seed_sets", "2")
    assert "identical results: yes" in stdout
    rows = _table_rows(stdout)
    assert list(rows) == ["comparison", "resampling both batches", "replicates read back (--bootstrap_cache)"]
    assert rows["resampling both batches"][1] == "1.0x"
    assert all(float(seconds) > 0 for seconds, _ in list(rows.values())[1:])

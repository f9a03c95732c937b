"""The benchmark scripts run and print their tables (tiny sizes, in a child process)."""

import subprocess
import sys

import pytest

from programs import REPO, child_env


@pytest.mark.slow
def test_adm_release_speed_measures_ours_without_a_release():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "adm_release_speed.py"), "--train_batch", "2",
                             "--sample_batch", "2", "--repeats", "1", "--warmup", "0"],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    expected = ["train step, fp32", "train step, bf16 autocast (release: whole step under autocast)",
                "sample DDIM-25, fp32", "sample DDIM-25, bf16 autocast"]
    assert [name for name in rows if name != "task"] == expected
    for name in expected:
        ours, release, ratio = rows[name]
        assert float(ours) > 0, name
        assert release == ratio == "—", name  # no release given: nothing to compare with
    assert "release: not measured" in result.stdout

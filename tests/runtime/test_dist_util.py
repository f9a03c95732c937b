"""Launcher detection: mpiexec, torchrun and Slurm environments, and a single process without a group."""

import pytest

from guided_diffusion.runtime import distributed as dist_util


@pytest.mark.parametrize("env, expected", [
    ({}, ("single", 0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ("torchrun", 3, 8, 1)),
    ({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16"},
     ("slurm", 5, 16, 1)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, ("single", 0, 1, 0)),  # a bare sbatch script, not srun
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, ("mpi", 1, 2, -1)),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
     ("mpi", 2, 4, 0)),
])
def test_detect_launcher(env, expected):
    launch = dist_util.detect_launcher(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == expected


@pytest.mark.parametrize("nodelist, first", [("node7", "node7"), ("gpu[003-005,010]", "gpu003"),
                                             ("a[1,4],b2", "a1"), ("c-12", "c-12")])
def test_first_slurm_host(nodelist, first):
    assert dist_util.first_host(nodelist) == first


def test_single_process_needs_no_process_group():
    dist_util.setup_dist()
    assert dist_util.world_size() == 1 and not dist_util.is_distributed()
    assert dist_util.broadcast_object([1, 2]) == [1, 2]
    dist_util.raise_if_any_failed(None)
    with pytest.raises(SystemExit, match="error: boom"):
        dist_util.raise_if_any_failed(ValueError("boom"))

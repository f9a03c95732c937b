"""Process groups for every launcher: none (one process), torchrun, Slurm `srun`, and `mpiexec` (mpi4py).

`setup_dist()` finds out which launcher started the process, sets up `torch.distributed` (NCCL on GPUs,
gloo on CPUs) when there is more than one process, and leaves a single process without any process group.
Rendezvous is MASTER_ADDR/MASTER_PORT: torchrun sets them; under Slurm they come from the step's first
node and the job id; under mpiexec rank 0 picks them and broadcasts them over MPI. Nodes are handled alike.
"""

import datetime
import os
import re
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from guided_diffusion.runtime import cpu_allocator

# Rank 0 may spend a while (checking shards, writing the final npz) while the others wait in a collective.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    launcher: str  # "single", "torchrun", "slurm" or "mpi"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


_launch = Launch("single")
_device = None


def detect_launcher(environ=None):
    """The launcher, rank, world size and local rank this process was started with (no side effects)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / torch.distributed.launch
        return Launch("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:  # inside an `srun` step (not a bare sbatch script)
        return Launch("slurm", int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                      int(env.get("SLURM_LOCALID", 0)))
    mpi_variables = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                     ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"), ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"))
    for rank_key, size_key, local_key in mpi_variables:
        if rank_key in env and size_key in env:
            return Launch("mpi", int(env[rank_key]), int(env[size_key]), int(env.get(local_key, -1)))
    return Launch("single")


def setup_dist(backend=None):
    """Join the process group of this launch (if any) and pick this process's device. Idempotent."""
    global _launch, _device
    if dist.is_available() and dist.is_initialized():
        return _launch
    launch = detect_launcher()
    if launch.launcher == "mpi":
        launch = _setup_mpi_rendezvous(launch)
    elif launch.launcher == "slurm" and launch.world_size > 1:
        _setup_slurm_rendezvous()
    _device = _pick_device(launch.local_rank)
    if launch.world_size > 1:
        if not dist.is_available():
            raise RuntimeError("this PyTorch build has no torch.distributed, which a multi-process launch needs")
        backend = backend or ("nccl" if _device.type == "cuda" else "gloo")
        os.environ.setdefault("RANK", str(launch.rank))
        os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                timeout=COLLECTIVE_TIMEOUT)
    _launch = launch
    return launch


def _pick_device(local_rank):
    if torch.cuda.is_available():
        device = torch.device("cuda", max(local_rank, 0) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    cpu_allocator.use_on_cpu()  # large activations otherwise cost fresh page faults on every forward pass
    return torch.device("cpu")


def _setup_mpi_rendezvous(launch):
    """Under mpiexec: ranks, local ranks and MASTER_ADDR/PORT from MPI.COMM_WORLD (rank 0 picks them)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError("started by mpiexec, but mpi4py is not installed: pip install mpi4py "
                           "(or launch with torchrun / srun)") from error
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if size > 1:
        hosts = comm.allgather(socket.gethostname())
        if rank == 0:
            addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else _own_address())
            port = os.environ.get("MASTER_PORT") or str(_free_port())
        else:
            addr = port = None
        addr, port = comm.bcast((addr, port), root=0)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, port
    return Launch("mpi", rank, size, local_rank)


def _setup_slurm_rendezvous():
    env = os.environ
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise RuntimeError("under srun but SLURM_STEP_NODELIST is not set: set MASTER_ADDR yourself")
        env["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in env:
        # Every task derives the same port from the job (and step) id.
        job = int(env.get("SLURM_JOB_ID", "0")) + int(env.get("SLURM_STEP_ID", "0") or 0)
        env["MASTER_PORT"] = str(20000 + job % 20000)


def first_host(nodelist):
    """The first host name of a Slurm node list such as `gpu[003-005,010],cpu1` (-> `gpu003`)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    try:
        return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              check=True, timeout=30).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return prefix + first


def _own_address():
    return socket.gethostbyname(socket.getfqdn())


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def is_distributed():
    """Whether a torch.distributed process group is up (set up by `setup_dist()` or any other way)."""
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's rank: the process group's when there is one, else the launch's (0 for one process)."""
    return dist.get_rank() if is_distributed() else _launch.rank


def world_size():
    """The number of processes: the process group's when there is one, else the launch's (1 for one process)."""
    return dist.get_world_size() if is_distributed() else _launch.world_size


def launcher():
    return _launch.launcher


def dev():
    """This process's device (call `setup_dist()` first; without it, cuda:0 or the CPU)."""
    return _device if _device is not None else _pick_device(0)


def barrier():
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[dev().index])
        else:
            dist.barrier()


def broadcast_object(obj, src=0):
    """`obj` from rank `src` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj):
    """Every rank's `obj`, in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def raise_if_any_failed(error):
    """Collective: raise on every rank if any rank passes an error (a message or exception), else return.

    Lets all processes stop together with the same message when one finds a bad flag, instead of the
    others waiting forever in the next collective.
    """
    messages = [m for m in all_gather_objects(None if error is None else str(error)) if m]
    if messages:
        unique = list(dict.fromkeys(messages))
        raise SystemExit("error: " + "\n".join(unique))


def cleanup():
    if is_distributed():
        dist.destroy_process_group()

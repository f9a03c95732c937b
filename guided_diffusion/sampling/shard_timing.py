"""What a sampling folder's images cost, from the times its shards record (wherever they were sampled)."""

import collections
import os
import zipfile

import numpy as np

from guided_diffusion.sampling.store import SHARDS, shard_files

# Below this share of its threads' time a CPU shard shared its cores with other work. Two 2-thread jobs on 2
# cores slow each other far more than twofold (a DDPM-100 shard: 177 s alone, 745 s beside an evaluator).
LOW_CPU_SHARE = 0.8

SamplingTime = collections.namedtuple("SamplingTime", "seconds cpu_share shared_shards")
SamplingTime.__doc__ = """What a folder's images cost: `seconds` of sampling, and on the CPU the share of its
threads' time that the sampler got (`cpu_seconds / (seconds * threads)`: about 1 on otherwise idle cores, less
where other work shared them, which makes `seconds` overstate the cost; None on a GPU or for older shards);
`shared_shards`: the file names of the shards whose own share is below LOW_CPU_SHARE."""


def shared_cores(seconds, cpu_seconds, threads):
    """Whether work that took `seconds` and this process's `cpu_seconds` on `threads` threads shared its cores
    with other work (its share of the threads' time below LOW_CPU_SHARE)."""
    return seconds > 0 and threads > 0 and cpu_seconds / (seconds * threads) < LOW_CPU_SHARE


def sampling_time(samples_dir, num_samples):
    """The SamplingTime of a folder's first `num_samples` images, summed over the shards that hold them (every
    process, job and machine that sampled them; model loading and waiting left out), or None where a shard
    does not record its time (an older version's) or images are missing. A shard's images share its time
    evenly."""
    counted = np.zeros(num_samples, dtype=bool)
    seconds = cpu_seconds = thread_seconds = 0.0
    cpu_timed = True
    shared = []
    for path in shard_files(os.path.join(samples_dir, SHARDS)):
        try:
            with np.load(path, allow_pickle=False) as data:
                if "seconds" not in data.files:
                    return None
                indices, shard_seconds = data["indices"], float(data["seconds"])
                shard_cpu = float(data["cpu_seconds"]) if "cpu_seconds" in data.files else None
                threads = int(data["torch_threads"]) if "torch_threads" in data.files else -1
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        ours = indices[(indices >= 0) & (indices < num_samples)]
        fresh = ours[~counted[ours]]
        if not len(fresh):
            continue
        share = len(fresh) / max(len(indices), 1)
        seconds += shard_seconds * share
        if shard_cpu is None or threads < 1:
            cpu_timed = False
        else:
            cpu_seconds += shard_cpu * share
            thread_seconds += shard_seconds * threads * share
            if shared_cores(shard_seconds, shard_cpu, threads):
                shared.append(os.path.basename(path))
        counted[fresh] = True
    if not counted.all():
        return None
    cpu_share = cpu_seconds / thread_seconds if cpu_timed and thread_seconds > 0 else None
    return SamplingTime(seconds, cpu_share, tuple(shared) if cpu_share is not None else ())

"""The output folder of a sampling run: manifest, one shard per finished batch, final npz and grid.

Layout of `root`:

- `manifest.json`: the full config of the run (whatever changes the samples), the shard size and
  informational details. Created once, exclusively: a job with another config in the same folder is refused,
  naming the keys that differ.
- `shards/*.npz`: one per block of `shard_size` consecutive image indices, written to a temporary file and
  renamed, holding the image indices, uint8 NHWC images, labels (-1 without classes), the config digest and
  the intra-op thread count it was sampled with. Shards are checked when read (zip CRCs, shapes, dtypes,
  index range, labels, digest); a damaged one is deleted so its images are sampled again.
- `jobs/`, `claims/`: the processes working in the folder and the blocks each is sampling
  (`folder_jobs.py`). Jobs with the same config share the folder, each process claiming blocks, also from
  several nodes; a job with another config is refused at once, naming the running job.
- `samples_{N}x{H}x{W}x3.npz` in the ADM evaluator's format (`arr_0` images ordered by index, `arr_1`
  labels when the run has classes) and `samples_{N}x{H}x{W}x3_grid.png` with the first 64 samples.
"""

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zipfile

import numpy as np

from guided_diffusion.data.image_io import save_image_grid
from guided_diffusion.runtime.files import atomic_write, create_exclusively, is_temporary, remove_if_present
from guided_diffusion.sampling.folder_jobs import DEFAULT_TIMEOUT, FolderJobs, describe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
GRID_IMAGES = 64
ASSEMBLY_CLAIM = "assemble"
_BLOCK_SHARD = re.compile(r"shard_(\d+)_block(\d+)\.npz")


class OutputFolderError(RuntimeError):
    """The output folder cannot be used for this run (unwritable, or it holds another run)."""


class ShardError(ValueError):
    """A shard file is damaged or does not belong to this run."""


def config_digest(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def batch_name(num_samples, image_shape):
    """`samples_{N}x{H}x{W}x3`: the stem of the final npz (the ADM release's naming) and of its grid."""
    return "samples_" + "x".join(str(int(s)) for s in (num_samples, *image_shape))


class SampleStore:
    """Shards, manifest and final outputs of one run in folder `root`."""

    def __init__(self, root, config, num_samples, image_shape, expected_labels=None, claim_timeout=DEFAULT_TIMEOUT):
        """`config`: JSON-able dict of everything that changes the samples. `image_shape`: (H, W, 3).
        `expected_labels(indices)`: the labels the run assigns (None without classes). `claim_timeout`: seconds
        without a heartbeat after which a job on another host counts as gone (see folder_jobs.py)."""
        self.root = root
        self.config = json.loads(json.dumps(config))  # as it reads back from the manifest (tuples -> lists)
        self.digest = config_digest(self.config)
        self.num_samples = int(num_samples)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.expected_labels = expected_labels
        self.shard_dir = os.path.join(root, SHARDS)
        name = batch_name(self.num_samples, self.image_shape)
        self.final_path = os.path.join(root, name + ".npz")
        self.grid_path = os.path.join(root, name + "_grid.png")
        self.jobs = FolderJobs(root, claim_timeout)
        self.shard_size = None  # images per block (shard): fixed by the manifest

    # ------------------------------------------------------------------------------------------------
    # Before sampling (rank 0)

    def check_writable(self):
        """Create the folders and prove a file can be written there."""
        try:
            os.makedirs(self.shard_dir, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=self.shard_dir)  # own name: jobs may start together
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as error:
            raise OutputFolderError(f"output folder {self.root} is not writable: {error}") from error

    def manifest_path(self):
        return os.path.join(self.root, MANIFEST)

    def check_manifest(self):
        """Raise OutputFolderError if the folder holds a run with another config, or a running job works on
        another config; True if the folder holds this run (which goes on where it stopped)."""
        running = self.jobs.live_jobs()
        path = self.manifest_path()
        if not os.path.exists(path):
            for _, record, age in running:  # a job that has not written the manifest yet (loading its model)
                if record.get("digest") != self.digest and isinstance(record.get("config"), dict):
                    raise OutputFolderError(
                        f"output folder {self.root} is in use by job {describe(record, age)} with a different "
                        "config: use another --output_dir, or start this job after that one has finished. "
                        "Differences (the running job -> now):\n"
                        + "\n".join(describe_differences(record["config"], self.config)))
            leftovers = [n for n in os.listdir(self.shard_dir) if n.endswith(".npz")] if os.path.isdir(
                self.shard_dir) else []
            if leftovers:
                raise OutputFolderError(f"output folder {self.root} holds {len(leftovers)} shards but no {MANIFEST}: "
                                        "it is not known which config made them; use another --output_dir")
            return False
        try:
            with open(path) as f:
                manifest = json.load(f)
            old = manifest["config"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise OutputFolderError(f"{path} is unreadable ({error}); use another --output_dir") from error
        if manifest.get("format") != FORMAT_VERSION:
            raise OutputFolderError(f"{path} has format {manifest.get('format')!r}, this code writes "
                                    f"{FORMAT_VERSION}; use another --output_dir")
        if old != self.config:
            busy = "; ".join(describe(record, age) for _, record, age in running)
            raise OutputFolderError(f"output folder {self.root} holds a run with a different config"
                                    + (f", which job {busy} is running now" if busy else "")
                                    + "; continue it with the same flags or use another --output_dir. Differences "
                                    "(in the folder -> now):\n" + "\n".join(describe_differences(old, self.config)))
        self.shard_size = manifest.get("shard_size")
        return True

    def write_manifest(self, info=None, shard_size=1):
        """Create the manifest unless the folder has one: of two jobs starting together, exactly one creates
        it, and the other reads it (refused if its config differs). Sets `shard_size` from the manifest."""
        manifest = {"format": FORMAT_VERSION, "digest": self.digest, "num_samples": self.num_samples,
                    "image_shape": list(self.image_shape), "shard_size": int(shard_size), "config": self.config,
                    "info": info or {}}
        text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        path = self.manifest_path()
        created = create_exclusively(path, text)
        if not created:  # another job was first: continue its run if the config is the same
            self.check_manifest()
        if created or self.shard_size is None:  # (None: the manifest of an older version: this job's blocks)
            self.shard_size = int(shard_size)
        return path

    # ------------------------------------------------------------------------------------------------
    # Jobs sharing the folder

    def join(self, details=None):
        """Register this process in the folder, so that other jobs see it (with the config) from now on."""
        return self.jobs.register({"digest": self.digest, "config": self.config, **(details or {})})

    def close(self):
        """Leave the folder: release this process's claims and remove its record."""
        self.jobs.close()

    # ------------------------------------------------------------------------------------------------
    # Shards

    def shard_paths(self):
        if not os.path.isdir(self.shard_dir):
            return []
        return sorted(os.path.join(self.shard_dir, n) for n in os.listdir(self.shard_dir)
                      if n.endswith(".npz") and not n.startswith("."))

    def write_shard(self, indices, images, labels=None, block=None, torch_threads=-1):
        """Store finished images: `images` uint8 [n, H, W, 3] for image `indices`, `labels` [n] or None.

        `block`: the block the images belong to (names the shard, and releases this process's claim on it).
        `torch_threads`: the intra-op thread count they were sampled with, recorded in the shard.
        """
        indices = np.asarray(indices, dtype=np.int64)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.full(len(indices), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if block is None:
            tag = hashlib.sha256(indices.tobytes()).hexdigest()[:10]
            path = os.path.join(self.shard_dir, f"shard_{int(indices[0]):08d}_n{len(indices)}_{tag}.npz")
        else:
            path = self.block_path(block)
        atomic_write(path, lambda f: np.savez(f, indices=indices, images=images, labels=labels,
                                              digest=np.array(self.digest), torch_threads=np.int64(torch_threads)))
        if block is not None:
            self.jobs.release(self.block_claim(block))
        return path

    # Blocks: image indices [k * shard_size, (k + 1) * shard_size), the unit that processes claim.

    def block_path(self, block):
        return os.path.join(self.shard_dir, f"shard_{block * self.shard_size:08d}_block{self.shard_size}.npz")

    def block_claim(self, block):
        return _block_claim(self.shard_size, block)

    def block_done(self, block):
        return os.path.exists(self.block_path(block))

    def blocks_to_sample(self, done):
        """{block: its image indices not in `done`} for every block with images still to sample."""
        missing = np.setdiff1d(np.arange(self.num_samples), done)
        blocks = missing // self.shard_size
        return {int(k): missing[blocks == k] for k in np.unique(blocks)}

    def finished_blocks(self, blocks):
        """The blocks among `blocks` whose shard exists (one directory listing)."""
        names = set(os.listdir(self.shard_dir)) if os.path.isdir(self.shard_dir) else set()
        return [k for k in blocks if os.path.basename(self.block_path(k)) in names]

    def claimed_batches(self, todo, images_per_batch, first=0):
        """Yield lists of (block, indices) that this process has claimed, about `images_per_batch` images at a
        time, until every block of `todo` ({block: indices}) has its shard. Blocks that other live processes
        hold are left to them and waited for; those of processes that are gone are taken over. Store each
        block with `write_shard(..., block=block)`, which releases its claim.
        """
        order = sorted(todo)
        first = first % len(order) if order else 0
        pending = order[first:] + order[:first]  # the ranks of a job start in different places
        while pending:
            batch, left, size = [], [], 0
            for block in pending:
                if size >= images_per_batch:
                    left.append(block)
                elif self.block_done(block):
                    continue
                elif not self.jobs.claim(self.block_claim(block)):
                    left.append(block)  # another live process samples it
                elif self.block_done(block):  # finished between the two looks
                    self.jobs.release(self.block_claim(block))
                else:
                    batch.append((block, todo[block]))
                    size += len(todo[block])
            pending = left
            if batch:
                yield batch
            elif pending:
                time.sleep(self.jobs.poll_seconds)

    def read_shard(self, path):
        """(indices, images, labels) of a shard, or ShardError saying what is wrong with it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"indices", "images", "labels", "digest"} - set(data.files)
                if missing:
                    raise ShardError(f"missing arrays {sorted(missing)}")
                if str(data["digest"]) != self.digest:
                    raise ShardError("made with another config")
                indices, images, labels = data["indices"], data["images"], data["labels"]
        except ShardError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise ShardError(f"unreadable ({type(error).__name__}: {error})") from error
        n = len(indices)
        if indices.dtype != np.int64 or indices.ndim != 1 or n == 0:
            raise ShardError(f"bad indices {indices.dtype} {indices.shape}")
        if images.dtype != np.uint8 or images.shape != (n, *self.image_shape):
            raise ShardError(f"bad images {images.dtype} {images.shape}, expected uint8 {(n, *self.image_shape)}")
        if labels.dtype != np.int64 or labels.shape != (n,):
            raise ShardError(f"bad labels {labels.dtype} {labels.shape}")
        if indices.min() < 0 or indices.max() >= self.num_samples or len(np.unique(indices)) != n:
            raise ShardError("indices out of range or repeated")
        expected = self.expected_labels(indices) if self.expected_labels else np.full(n, -1, np.int64)
        if not np.array_equal(labels, expected):
            raise ShardError("labels differ from the labels this run assigns to its indices")
        return indices, images, labels

    def scan(self):
        """Check every shard; delete damaged ones, and temporary files and claims that processes which are gone
        left behind. Returns the sorted finished indices."""
        self.remove_leftovers()
        done = np.zeros(self.num_samples, dtype=bool)
        for path in self.shard_paths():
            try:
                indices, _, _ = self.read_shard(path)
            except ShardError as error:
                log.warning("shard %s is damaged (%s): deleting it, its images will be sampled again", path, error)
                os.unlink(path)
                continue
            done[indices] = True
        return np.flatnonzero(done)

    # ------------------------------------------------------------------------------------------------
    # Final outputs (rank 0, after every rank finished)

    def remove_leftovers(self):
        """Delete what writes cut short (e.g. by SIGKILL) left: shard temporaries whose block no live process
        holds, assembly scratch files and final-npz temporaries unless a live process assembles, and the
        records and claims of processes that are gone."""
        self.jobs.prune()
        if os.path.isdir(self.shard_dir):
            for name in os.listdir(self.shard_dir):
                if not is_temporary(name):
                    continue
                block = _BLOCK_SHARD.match(name[1:])
                if block:
                    first, size = int(block.group(1)), int(block.group(2))
                    if self.jobs.holder(_block_claim(size, first // size)) is not None:
                        continue  # a live process is writing it
                remove_if_present(os.path.join(self.shard_dir, name))
        if self.jobs.holder(ASSEMBLY_CLAIM) in (None, self.jobs.name):
            self._remove_assembly_leftovers()
        if not self.jobs.live_jobs():
            for name in os.listdir(self.root):
                if is_temporary(name, MANIFEST):
                    remove_if_present(os.path.join(self.root, name))

    def _remove_assembly_leftovers(self):
        final = os.path.basename(self.final_path)
        for name in os.listdir(self.root):
            if (name.startswith(".assemble.") and name.endswith(".npy")) or is_temporary(name, final):
                remove_if_present(os.path.join(self.root, name))

    def assemble(self):
        """Write the final npz (images ordered by index) and the grid after checking count and coverage.

        Of the processes sharing the folder, one at a time assembles (the others wait for it).
        """
        if self.jobs.name is None:  # not registered: nobody to coordinate with
            return self._assemble()
        while not self.jobs.claim(ASSEMBLY_CLAIM):
            time.sleep(self.jobs.poll_seconds)
        try:
            self._remove_assembly_leftovers()  # of an assembly that was killed
            return self._assemble()
        finally:
            self.jobs.release(ASSEMBLY_CLAIM)

    def _assemble(self):
        shape = (self.num_samples, *self.image_shape)
        fd, scratch = tempfile.mkstemp(prefix=".assemble.", suffix=".npy", dir=self.root)
        os.close(fd)
        try:
            # A disk-backed array: 50K images at 256x256 are 9.8 GB, and np.savez streams it in chunks.
            images = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=shape)
            labels = np.full(self.num_samples, -1, dtype=np.int64)
            filled = np.zeros(self.num_samples, dtype=bool)
            for path in self.shard_paths():
                try:
                    indices, shard_images, shard_labels = self.read_shard(path)
                except ShardError as error:
                    raise ShardError(f"shard {path} became damaged after sampling ({error}); run the same "
                                     "command again: it deletes the shard and samples its images again") from error
                # Two shards may hold an index: one of an older version's naming and a block's, or a block taken
                # over from a stalled job that finished it after all. Both hold the same images.
                fresh = ~filled[indices]
                images[indices[fresh]] = shard_images[fresh]
                labels[indices[fresh]] = shard_labels[fresh]
                filled[indices[fresh]] = True
            missing = np.flatnonzero(~filled)
            if len(missing):
                raise ShardError(f"{len(missing)} of {self.num_samples} samples are missing (first indices: "
                                 f"{missing[:10].tolist()}); run the same command again to sample them")
            images.flush()
            arrays = {"arr_0": images}
            if self.expected_labels is not None:
                arrays["arr_1"] = labels
            atomic_write(self.final_path, lambda f: np.savez(f, **arrays))
            save_image_grid(np.asarray(images[:GRID_IMAGES]), self.grid_path)
            del images
        finally:
            os.unlink(scratch)
        return self.final_path


def _block_claim(shard_size, block):
    return f"block{shard_size}_{block:08d}"


def describe_differences(old, new, prefix=""):
    """Lines `key: old -> new` for every (nested) key whose value differs."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"  {prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines

"""The output folder of a sampling run: manifest, one shard per finished batch, final npz and grid.

Layout of `root`:

- `manifest.json` (manifest.py): the config of the run (not the image count: image i is the same for any
  count), its count and the count's history, and the shard size. Created once, exclusively: a job with another
  config in the same folder is refused, naming the keys that differ. A job asking for more images grows the
  run (only the new images are sampled); one asking for fewer writes the final npz of the first ones.
- `shards/*.npz`: one per block of `shard_size` consecutive image indices, written to a temporary file and
  renamed, holding the image indices, uint8 NHWC images, labels (-1 without classes), the config digest and
  the intra-op thread count it was sampled with. Shards are checked when read (zip CRCs, shapes, dtypes,
  indices, labels, digest); a damaged one is deleted so its images are sampled again. Shards copied without
  their manifest are used when their digests show this run's config.
- `jobs/`, `claims/`: the processes working in the folder and the blocks each is sampling
  (`folder_jobs.py`). Jobs with the same config share the folder, each process claiming blocks, also from
  several nodes; a job with another config is refused at once, naming the running job.
- `samples_{N}x{H}x{W}x3.npz` in the ADM evaluator's format (`arr_0` images ordered by index, `arr_1`
  labels when the run has classes) and `samples_{N}x{H}x{W}x3_grid.png` with the first 64 samples. Before
  sampling and before writing them, the free space is checked; a run that grew replaces the smaller ones.

Manifests of format 1 (earlier versions) held the count in the config; given `legacy_config`, such a folder
is continued (and grown) and its manifest rewritten in format 2.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
import zipfile

import numpy as np

from guided_diffusion.data.image_io import save_image_grid
from guided_diffusion.runtime.disk_space import is_disk_full, require_free_space
from guided_diffusion.runtime.files import (
    atomic_write,
    atomic_write_text,
    create_exclusively,
    is_temporary,
    remove_if_present,
)
from guided_diffusion.sampling.folder_jobs import DEFAULT_TIMEOUT, FolderJobs, describe
from guided_diffusion.sampling.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    OutputFolderError,
    config_digest,
    describe_differences,
    grown,
    manifest_text,
    new_manifest,
    read_manifest,
    upgraded,
)

log = logging.getLogger(__name__)

SHARDS = "shards"
GRID_IMAGES = 64
GRID_COLUMNS = 8
ASSEMBLY_CLAIM = "assemble"
MANIFEST_CLAIM = "manifest"
# Bytes beyond the images: a shard's zip entries and small arrays, the npz's, and an .npy header.
SHARD_OVERHEAD, NPZ_OVERHEAD, NPY_HEADER = 4096, 2048, 128
_BLOCK_SHARD = re.compile(r"shard_(\d+)_block(\d+)(?:_to(\d+))?\.npz")
_FINAL = re.compile(r"samples_(\d+)x\d+x\d+x\d+(?:\.npz|_grid\.png)")


class ShardError(ValueError):
    """A shard file is damaged or does not belong to this run."""


def batch_name(num_samples, image_shape):
    """`samples_{N}x{H}x{W}x3`: the stem of the final npz (the ADM release's naming) and of its grid."""
    return "samples_" + "x".join(str(int(s)) for s in (num_samples, *image_shape))


class SampleStore:
    """Shards, manifest and final outputs of one run in folder `root`."""

    def __init__(self, root, config, num_samples, image_shape, expected_labels=None, claim_timeout=DEFAULT_TIMEOUT,
                 legacy_config=None):
        """`config`: JSON-able dict of everything that changes image i (not the image count). `image_shape`:
        (H, W, 3). `expected_labels(indices)`: the labels the run assigns (None without classes).
        `claim_timeout`: seconds without a heartbeat after which a job on another host counts as gone (see
        folder_jobs.py). `legacy_config(n)`: the config as format-1 manifests recorded this run with n images
        (None: such folders are refused)."""
        self.root = root
        self.config = json.loads(json.dumps(config))  # as it reads back from the manifest (tuples -> lists)
        self.digest = config_digest(self.config)
        self.digests = {self.digest}  # the digests this run's shards may carry (earlier versions' too)
        self.legacy_config = legacy_config
        self.num_samples = int(num_samples)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.expected_labels = expected_labels
        self.shard_dir = os.path.join(root, SHARDS)
        name = batch_name(self.num_samples, self.image_shape)
        self.final_path = os.path.join(root, name + ".npz")
        self.grid_path = os.path.join(root, name + "_grid.png")
        self.jobs = FolderJobs(root, claim_timeout)
        self.shard_size = None  # images per block (shard): fixed by the manifest
        self.folder_num_samples = None  # the images of the run in the folder (the manifest's count)
        self.grown_from = None  # the folder's count before this job grew the run
        self.counts = []  # the counts the run had before (its history): their final npz files are replaced
        self._found_shard_size = None  # of block shards copied without a manifest

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
            if is_disk_full(error):
                error.filename = error.filename or self.shard_dir
                raise
            raise OutputFolderError(f"output folder {self.root} is not writable: {error}") from error

    def manifest_path(self):
        return os.path.join(self.root, MANIFEST)

    def check_manifest(self):
        """Raise OutputFolderError if the folder holds a run with another config, or a running job works on
        another config; True if the folder holds this run (which goes on where it stopped, with as many
        images as this job asks for)."""
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
            self._check_shards_without_manifest()
            return False
        manifest = read_manifest(path)
        old, count = manifest["config"], manifest.get("num_samples")
        if manifest.get("format") == 1 and self.legacy_config is not None:
            new = self.legacy_config(count)  # this run as that version recorded it, at the folder's count
            if old == new:
                self.digests.add(config_digest(old))
                old = self.config
        elif manifest.get("format") == FORMAT_VERSION:
            new = self.config
        else:
            raise OutputFolderError(f"{path} has format {manifest.get('format')!r}, this code writes "
                                    f"{FORMAT_VERSION}; use another --output_dir")
        if old != self.config:
            busy = "; ".join(describe(record, age) for _, record, age in running)
            raise OutputFolderError(f"output folder {self.root} holds a run with a different config"
                                    + (f", which job {busy} is running now" if busy else "")
                                    + "; continue it with the same flags or use another --output_dir. Differences "
                                    "(in the folder -> now):\n" + "\n".join(describe_differences(old, new)))
        self.digests.update(manifest.get("legacy_digests", []))
        self.shard_size = manifest.get("shard_size")
        self.folder_num_samples = count
        self.counts = [entry.get("num_samples") for entry in manifest.get("history", [])]
        return True

    def _check_shards_without_manifest(self):
        """Shards copied without their manifest are this run's if their digests say so; else refused."""
        paths = self.shard_paths()
        if not paths:
            return
        digests = set(self.digests)
        if self.legacy_config is not None:
            digests.add(config_digest(self.legacy_config(self.num_samples)))
        foreign = [p for p in paths if _shard_digest(p) not in digests]
        if foreign:
            raise OutputFolderError(f"output folder {self.root} holds {len(foreign)} shards of another config and "
                                    f"no {MANIFEST} (or damaged ones): use another --output_dir, or move the shards")
        sizes = {int(m.group(2)) for m in map(_BLOCK_SHARD.fullmatch, map(os.path.basename, paths)) if m}
        self._found_shard_size = sizes.pop() if len(sizes) == 1 else None
        self.digests = digests
        log.info("output folder %s: %d shards without a %s, made with this run's config: using them", self.root,
                 len(paths), MANIFEST)

    def write_manifest(self, info=None, shard_size=1):
        """Create the manifest unless the folder has one: of two jobs starting together, exactly one creates
        it, and the other reads it (refused if its config differs). A job asking for more images than the
        manifest's count grows the run. Sets `shard_size` from the manifest."""
        shard_size = self._found_shard_size or int(shard_size)  # copied shards keep their blocks
        manifest = new_manifest(self.config, self.num_samples, self.image_shape, shard_size, info,
                                self.digests - {self.digest})
        # (looked for first: on a full disk, the temporary copy that exclusive creation writes would not fit)
        created = not os.path.exists(self.manifest_path()) and create_exclusively(self.manifest_path(),
                                                                                  manifest_text(manifest).encode())
        if created:
            self.folder_num_samples, self.counts = self.num_samples, [self.num_samples]
        else:  # another job was first: continue its run if the config is the same
            self.check_manifest()
            self._update_manifest(info)
        if created or self.shard_size is None:  # (None: the manifest of an older version: this job's blocks)
            self.shard_size = shard_size
        return self.manifest_path()

    def _update_manifest(self, info):
        """Grow the run to this job's count, and rewrite a format-1 manifest in this format."""
        with self._manifest_lock():
            manifest = read_manifest(self.manifest_path())
            if manifest.get("format") == 1:
                manifest = upgraded(manifest, self.config, self.digests - {self.digest})
            elif self.num_samples <= manifest["num_samples"]:
                return
            if self.num_samples > manifest["num_samples"]:
                self.grown_from = manifest["num_samples"]
                manifest = grown(manifest, self.num_samples, info)
            atomic_write_text(self.manifest_path(), manifest_text(manifest))
            self.folder_num_samples = manifest["num_samples"]
            self.counts = [entry.get("num_samples") for entry in manifest["history"]]

    def _manifest_lock(self):
        """Held while a job rewrites the manifest (when it is registered; else nobody to coordinate with)."""
        return self._holding(MANIFEST_CLAIM, "the manifest") if self.jobs.name is not None else _nothing()

    # ------------------------------------------------------------------------------------------------
    # Jobs sharing the folder

    def join(self, details=None):
        """Register this process in the folder, so that other jobs see it (with the config) from now on."""
        return self.jobs.register({"digest": self.digest, "config": self.config, **(details or {})})

    def close(self):
        """Leave the folder: release this process's claims and remove its record."""
        self.jobs.close()

    @contextlib.contextmanager
    def _holding(self, claim, what):
        """Hold `claim` inside the block, waiting (and saying so) while another live job holds it."""
        waited = None
        while not self.jobs.claim(claim):
            waited = self.report_wait([claim], what, reported=waited)
            time.sleep(self.jobs.poll_seconds)
        try:
            yield
        finally:
            self.jobs.release(claim)

    def report_wait(self, claims, what=None, reported=None):
        """Log whose claims among `claims` this job waits for, since when, and how long at most, unless those
        jobs are the ones it reported last (`reported`: this call's last return value, which it returns).
        `what`: what one claim stands for ("the final npz"); None for blocks."""
        holders = self.jobs.holders(claims)
        key = [(record.get("host"), record.get("pid")) for record, _, _, _ in holders]
        if not holders or key == reported:
            return reported
        timeout = self.jobs.timeout
        for record, age, since, count in holders:
            log.info("waiting for %s claimed at %s by job %s: left to it while its heartbeat goes on; if it has "
                     "stopped, taken over after --claim_timeout %g s without a heartbeat, in about %.0f s",
                     what or f"{count} block(s)", time.strftime("%H:%M:%S", time.localtime(since)),
                     describe(record, age), timeout, max(0.0, timeout - age))
        return key

    # ------------------------------------------------------------------------------------------------
    # Shards

    def shard_paths(self):
        return shard_files(self.shard_dir)

    def write_shard(self, indices, images, labels=None, block=None, torch_threads=-1, seconds=None,
                    cpu_seconds=None):
        """Store finished images: `images` uint8 [n, H, W, 3] for image `indices`, `labels` [n] or None.

        `block`: the block the images belong to (names the shard, and releases this process's claim on it).
        `torch_threads`: the intra-op thread count they were sampled with, recorded in the shard.
        `seconds`: the sampling time they took, and `cpu_seconds` the CPU time this process spent meanwhile
        (sampling on the CPU), recorded in the shard (`shard_timing.sampling_time` sums them).
        """
        indices = np.asarray(indices, dtype=np.int64)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.full(len(indices), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        path = self.block_path(block) if block is not None else self._loose_path(indices)
        timing = {name: np.float64(value) for name, value in (("seconds", seconds), ("cpu_seconds", cpu_seconds))
                  if value is not None}
        atomic_write(path, lambda f: np.savez(f, indices=indices, images=images, labels=labels,
                                              digest=np.array(self.digest), torch_threads=np.int64(torch_threads),
                                              **timing))
        if block is not None:
            self.jobs.release(self.block_claim(block))
        return path

    def _loose_path(self, indices):
        tag = hashlib.sha256(indices.tobytes()).hexdigest()[:10]
        return os.path.join(self.shard_dir, f"shard_{int(indices[0]):08d}_n{len(indices)}_{tag}.npz")

    # Blocks: image indices [k * shard_size, (k + 1) * shard_size), the unit that processes claim. The last
    # block of a run whose count cuts it short has a name (and claim) of its own, ending at the count: when
    # the run grows, the whole block is another one, which its missing images are sampled in.

    def _block_end(self, block):
        return min((block + 1) * self.shard_size, self.num_samples)

    def block_path(self, block):
        return os.path.join(self.shard_dir, _block_name(self.shard_size, block, self._block_end(block)) + ".npz")

    def block_claim(self, block):
        return _block_claim(self.shard_size, block, self._block_end(block))

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
        hold are left to them and waited for (saying whose they are); those of processes that are gone are
        taken over. Store each block with `write_shard(..., block=block)`, which releases its claim.
        """
        order = sorted(todo)
        first = first % len(order) if order else 0
        pending = order[first:] + order[:first]  # the ranks of a job start in different places
        waited = None
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
                waited = self.report_wait([self.block_claim(k) for k in pending], reported=waited)
                time.sleep(self.jobs.poll_seconds)

    def read_shard(self, path):
        """(indices, images, labels) of a shard's images of this run (indices below its count; a run that
        grew has more), or ShardError saying what is wrong with the shard."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"indices", "images", "labels", "digest"} - set(data.files)
                if missing:
                    raise ShardError(f"missing arrays {sorted(missing)}")
                if str(data["digest"]) not in self.digests:
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
        if indices.min() < 0 or len(np.unique(indices)) != n:
            raise ShardError("indices negative or repeated")
        ours = indices < self.num_samples
        if not ours.all():
            indices, images, labels = indices[ours], images[ours], labels[ours]
        expected = self.expected_labels(indices) if self.expected_labels else np.full(len(indices), -1, np.int64)
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
        self._retire_blocks_with_gaps(done)
        return np.flatnonzero(done)

    def _retire_blocks_with_gaps(self, done):
        """A block's shard says the block is finished. Where the block still misses images (another shard
        holding some was damaged, or an earlier version named the last block of a run that has grown since
        like a whole one), that shard is renamed to a name of no block: its images stay, the rest is sampled."""
        if not self.shard_size:
            return
        for path in self.shard_paths():
            match = _BLOCK_SHARD.fullmatch(os.path.basename(path))
            if not match or int(match.group(2)) != self.shard_size:
                continue
            block = int(match.group(1)) // self.shard_size
            if path == self.block_path(block) and not done[block * self.shard_size:self._block_end(block)].all():
                os.replace(path, path[:-len(".npz")] + f"_retired_{secrets.token_hex(4)}.npz")

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
                    end = int(block.group(3)) if block.group(3) else first + size
                    if self.jobs.holder(_block_claim(size, first // size, end)) is not None:
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

    def final_bytes(self):
        """{what: bytes} that writing the final npz and grid needs (at most; the grid is a PNG)."""
        height, width, channels = self.image_shape
        n, per_image = self.num_samples, height * width * channels
        shown = min(n, GRID_IMAGES)
        columns, rows = min(shown, GRID_COLUMNS), -(-shown // GRID_COLUMNS)
        grid = rows * height * (columns * width * channels + 1) * 101 // 100 + NPZ_OVERHEAD
        return {"final npz": n * (per_image + 8) + NPZ_OVERHEAD, "its scratch copy": n * per_image + NPY_HEADER,
                "grid": grid}

    def check_free_space(self, images_to_sample):
        """Raise NotEnoughSpace unless the folder has room for the shards of `images_to_sample` images and for
        the final npz, its scratch copy and the grid, naming the bytes needed and free."""
        per_image = int(np.prod(self.image_shape))
        blocks = -(-images_to_sample // max(1, self.shard_size or 1)) + 1
        parts = {"shards": images_to_sample * (per_image + 16) + blocks * SHARD_OVERHEAD, **self.final_bytes()}
        return require_free_space(self.root, parts, f"to sample {images_to_sample} images and write the final npz")

    def assemble(self):
        """Write the final npz (images ordered by index) and the grid after checking free space, count and
        coverage. A run that grew removes the final npz and grid of its smaller counts afterwards.

        Of the processes sharing the folder, one at a time assembles (the others wait for it).
        """
        if self.jobs.name is None:  # not registered: nobody to coordinate with
            return self._assemble()
        with self._holding(ASSEMBLY_CLAIM, "the final npz"):
            self._remove_assembly_leftovers()  # of an assembly that was killed
            return self._assemble()

    def _assemble(self):
        require_free_space(self.root, self.final_bytes(), "to write the final npz",
                           advice="then run the same command again: the sampled images are kept, it writes the npz")
        fd, scratch = tempfile.mkstemp(prefix=".assemble.", suffix=".npy", dir=self.root)
        os.close(fd)
        try:
            try:
                labels = self._fill_scratch(scratch)
            except OSError as error:
                error.filename = error.filename or scratch  # (pwrite and fsync do not name it)
                raise
            # A disk-backed array: 50K images at 256x256 are 9.8 GB, and np.savez streams it in chunks.
            arrays = {"arr_0": np.load(scratch, mmap_mode="r")}
            if self.expected_labels is not None:
                arrays["arr_1"] = labels
            atomic_write(self.final_path, lambda f: np.savez(f, **arrays))
            save_image_grid(np.asarray(arrays["arr_0"][:GRID_IMAGES]), self.grid_path)
        finally:
            remove_if_present(scratch)
        self._remove_smaller_finals()
        return self.final_path

    def _fill_scratch(self, scratch):
        """Every image, ordered by index, into the .npy file `scratch`; returns the labels. Written with
        pwrite, not through a memory map: a full disk is then an OSError, not a bus error (SIGBUS)."""
        per_image = int(np.prod(self.image_shape))
        header = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=(self.num_samples,
                                                                                       *self.image_shape))
        offset = header.offset  # (the file is sparse: nothing of the map is written)
        del header
        labels = np.full(self.num_samples, -1, dtype=np.int64)
        filled = np.zeros(self.num_samples, dtype=bool)
        with open(scratch, "r+b") as f:
            for path in self.shard_paths():
                try:
                    indices, images, shard_labels = self.read_shard(path)
                except ShardError as error:
                    raise ShardError(f"shard {path} became damaged after sampling ({error}); run the same "
                                     "command again: it deletes the shard and samples its images again") from error
                # Two shards may hold an index: one of an older version's naming and a block's, or a block taken
                # over from a stalled job that finished it after all. Both hold the same images.
                fresh = np.flatnonzero(~filled[indices])
                fresh = fresh[np.argsort(indices[fresh])]
                for run in np.split(fresh, np.flatnonzero(np.diff(indices[fresh]) != 1) + 1):
                    if len(run):  # consecutive indices: one write
                        os.pwrite(f.fileno(), images[run].tobytes(), offset + int(indices[run[0]]) * per_image)
                labels[indices[fresh]] = shard_labels[fresh]
                filled[indices[fresh]] = True
            missing = np.flatnonzero(~filled)
            if len(missing):
                raise ShardError(f"{len(missing)} of {self.num_samples} samples are missing (first indices: "
                                 f"{missing[:10].tolist()}); run the same command again to sample them")
            f.flush()
            os.fsync(f.fileno())  # a full disk that writeback finds (NFS) fails here
        return labels

    def _remove_smaller_finals(self):
        """The final npz and grid of the counts this run had before it grew: the new ones begin with their images."""
        smaller = {n for n in self.counts if isinstance(n, int) and n < self.num_samples}
        for name in os.listdir(self.root):
            match = _FINAL.fullmatch(name)
            if match and int(match.group(1)) in smaller and name.startswith(batch_name(int(match.group(1)),
                                                                                       self.image_shape)):
                remove_if_present(os.path.join(self.root, name))


def _shard_digest(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["digest"])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None


@contextlib.contextmanager
def _nothing():
    yield


def _block_name(shard_size, block, end):
    name = f"shard_{block * shard_size:08d}_block{shard_size}"
    return name if end == (block + 1) * shard_size else f"{name}_to{end:08d}"


def _block_claim(shard_size, block, end):
    claim = f"block{shard_size}_{block:08d}"
    return claim if end == (block + 1) * shard_size else f"{claim}_to{end:08d}"


def shard_files(shard_dir):
    """The finished shards in `shard_dir`, sorted (not the hidden temporary files of writes in progress)."""
    if not os.path.isdir(shard_dir):
        return []
    return sorted(os.path.join(shard_dir, n) for n in os.listdir(shard_dir)
                  if n.endswith(".npz") and not n.startswith("."))

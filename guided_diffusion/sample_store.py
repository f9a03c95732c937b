"""The output folder of a sampling run: manifest, one shard per finished batch, final npz and grid.

Layout of `root`:

- `manifest.json`: the full config of the run (whatever changes the samples) and informational details.
  A rerun with another config in the same folder is refused, naming the keys that differ.
- `shards/*.npz`: one per finished batch, written to a temporary file and renamed, holding the image
  indices, uint8 NHWC images, labels (-1 without classes) and the config digest. Shards are checked when
  read (zip CRCs, shapes, dtypes, index range, labels, digest); a damaged one is deleted so its images
  are sampled again.
- `samples_{N}x{H}x{W}x3.npz` in the ADM evaluator's format (`arr_0` images ordered by index, `arr_1`
  labels when the run has classes) and `samples_{N}x{H}x{W}x3_grid.png` with the first 64 samples.
"""

import hashlib
import json
import logging
import os
import tempfile
import zipfile

import numpy as np

from .image_io import save_image_grid

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
GRID_IMAGES = 64


class OutputFolderError(RuntimeError):
    """The output folder cannot be used for this run (unwritable, or it holds another run)."""


class ShardError(ValueError):
    """A shard file is damaged or does not belong to this run."""


def config_digest(config):
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def file_identity(path, head_bytes=1 << 20):
    """Size and SHA-256 of the first MiB of a (local or blobfile) file: cheap, and independent of its path."""
    import blobfile as bf

    if not bf.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with bf.BlobFile(path, "rb") as f:
        head = f.read(head_bytes)
    return {"size": bf.stat(path).size, "sha256_first_mib": hashlib.sha256(head).hexdigest()}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path, write):
    """Call `write(file_object)` on a temporary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private; the outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def batch_name(num_samples, image_shape):
    """`samples_{N}x{H}x{W}x3`: the stem of the final npz (the ADM release's naming) and of its grid."""
    return "samples_" + "x".join(str(int(s)) for s in (num_samples, *image_shape))


class SampleStore:
    """Shards, manifest and final outputs of one run in folder `root`."""

    def __init__(self, root, config, num_samples, image_shape, expected_labels=None):
        """`config`: JSON-able dict of everything that changes the samples. `image_shape`: (H, W, 3).
        `expected_labels(indices)`: the labels the run assigns (None without classes)."""
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

    # ------------------------------------------------------------------------------------------------
    # Before sampling (rank 0)

    def check_writable(self):
        """Create the folders and prove a file can be written there."""
        try:
            os.makedirs(self.shard_dir, exist_ok=True)
            atomic_write(os.path.join(self.shard_dir, ".write_test"), lambda f: f.write(b"ok"))
            os.unlink(os.path.join(self.shard_dir, ".write_test"))
        except OSError as error:
            raise OutputFolderError(f"output folder {self.root} is not writable: {error}") from error

    def manifest_path(self):
        return os.path.join(self.root, MANIFEST)

    def check_manifest(self):
        """Raise OutputFolderError if the folder holds a run with another config; True if it holds this one."""
        path = self.manifest_path()
        if not os.path.exists(path):
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
            raise OutputFolderError(f"output folder {self.root} holds a run with a different config; continue it "
                                    "with the same flags or use another --output_dir. Differences "
                                    "(in the folder -> now):\n" + "\n".join(describe_differences(old, self.config)))
        return True

    def write_manifest(self, info=None):
        manifest = {"format": FORMAT_VERSION, "digest": self.digest, "num_samples": self.num_samples,
                    "image_shape": list(self.image_shape), "config": self.config, "info": info or {}}
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write(self.manifest_path(), lambda f: f.write(text.encode()))

    # ------------------------------------------------------------------------------------------------
    # Shards

    def shard_paths(self):
        if not os.path.isdir(self.shard_dir):
            return []
        return sorted(os.path.join(self.shard_dir, n) for n in os.listdir(self.shard_dir)
                      if n.endswith(".npz") and not n.startswith("."))

    def write_shard(self, indices, images, labels=None):
        """Store a finished batch: `images` uint8 [n, H, W, 3] for image `indices`, `labels` [n] or None."""
        indices = np.asarray(indices, dtype=np.int64)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.full(len(indices), -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        tag = hashlib.sha256(indices.tobytes()).hexdigest()[:10]
        path = os.path.join(self.shard_dir, f"shard_{int(indices[0]):08d}_n{len(indices)}_{tag}.npz")
        atomic_write(path, lambda f: np.savez(f, indices=indices, images=images, labels=labels,
                                              digest=np.array(self.digest)))
        return path

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
        """Check every shard; delete damaged ones and stale temporary files. Returns the sorted finished indices."""
        if os.path.isdir(self.shard_dir):
            for name in os.listdir(self.shard_dir):
                if name.startswith(".") and name.endswith(".tmp"):  # a write cut short (e.g. by SIGKILL)
                    os.unlink(os.path.join(self.shard_dir, name))
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

    def assemble(self):
        """Write the final npz (images ordered by index) and the grid after checking count and coverage."""
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
                                     "command again to redo it") from error
                fresh = ~filled[indices]  # two shards may hold an index if two runs shared the folder
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

"""Bootstrap replicates kept on disk, so that a batch is resampled once however often it is scored or compared.

A table scores each batch with intervals, then compares every row with its baseline (and with a second
baseline): each of those runs is a separate ``adm-evaluate`` process and would otherwise redraw the same
1,000 replicates of both batches. On the testbed a replicate set of a 2,000-image batch costs minutes (one
2,048-dimensional eigenvalue problem per resample for sFID), a table's comparisons as much as its sampling.

``adm-evaluate --bootstrap_cache DIR`` keeps one file per batch in DIR. An entry records everything its
replicates depend on -- the batch file and the reference file (their fingerprints), the feature backend's
weights, the resize target, the bootstrap's count and seed, and the metric settings (k, norms, KID's
options) -- and is used only while all of them are unchanged; otherwise it is recomputed and replaced.
The replicates are those the metrics code gives (stored as float64), so intervals and comparisons are
identical with or without the cache.
"""

import json
import warnings
from pathlib import Path

import numpy as np

from guided_diffusion.runtime.files import atomic_write, file_fingerprint

from .activation_cache import entry_stem

FORMAT = 1

__all__ = ["ReplicateStore"]


class ReplicateStore:
    """The cached replicates of one batch scored against one reference: ``load(n_boot, seed)`` (None when
    missing or stale) and ``save(n_boot, seed, replicates)``, for :class:`evaluations.bootstrap.SampleBootstrap`.

    `settings` is a JSON-able dict of whatever else the replicates depend on (backend weights, resize target,
    k, norms, KID options); it is compared as a whole.
    """

    def __init__(self, folder, batch_path, reference_path, backend_name, settings):
        self.folder = Path(folder)
        batch_path, reference_path = Path(batch_path), Path(reference_path)
        self._key = {
            "format": FORMAT,
            "batch": [str(batch_path.resolve()), file_fingerprint(batch_path)],
            "reference": [str(reference_path.resolve()), file_fingerprint(reference_path)],
            "backend": backend_name,
            "settings": settings,
        }
        slot = [self._key["batch"][0], self._key["reference"][0], backend_name, settings]
        self._safe_name = entry_stem(batch_path, backend_name, slot)

    def path(self, n_boot, seed):
        return self.folder / f"{self._safe_name}.boot{int(n_boot)}-seed{int(seed)}.npz"

    def _entry_key(self, n_boot, seed):
        return json.dumps({**self._key, "n_boot": int(n_boot), "seed": int(seed)}, sort_keys=True)

    def load(self, n_boot, seed):
        """{metric: replicates} stored under exactly this key, else None (missing, stale or unreadable)."""
        path = self.path(n_boot, seed)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["meta"]) != self._entry_key(n_boot, seed):
                    return None
                return {name[len("rep_"):]: data[name] for name in data.files if name.startswith("rep_")}
        except Exception:  # unreadable or of another format: recompute
            return None

    def save(self, n_boot, seed, replicates):
        arrays = {f"rep_{name}": np.asarray(values, dtype=np.float64) for name, values in replicates.items()}
        arrays["meta"] = np.array(self._entry_key(n_boot, seed))
        path = self.path(n_boot, seed)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(str(path), lambda f: np.savez(f, **arrays))
        except OSError as exc:  # a cache is an optimisation: an unwritable folder must not fail the scoring
            warnings.warn(f"cannot write bootstrap replicates to {path}: {exc}; pass another --bootstrap_cache "
                          "folder or none", RuntimeWarning)

"""Per-batch activations and their on-disk cache (``SAMPLE.<backend>.acts.npz`` beside each batch).

A cache is keyed by the backend's fingerprint and the batch file's size, mtime and end hashes, so a changed
batch or other weights recompute; an unreadable or stale cache is recomputed, an unwritable one only warned.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from guided_diffusion.runtime.files import atomic_write, file_fingerprint

from .backends import FEATURE_KEYS

CACHE_FORMAT = 1

Stats = Tuple[np.ndarray, np.ndarray]


@dataclass
class BatchFeatures:
    """Activations of one batch (``None`` when it has no images) and FID statistics per feature kind."""

    acts: Optional[Dict[str, np.ndarray]] = None
    stats: Dict[str, Stats] = field(default_factory=dict)

    @property
    def num_images(self):
        return 0 if self.acts is None else int(self.acts["pool"].shape[0])


# ----------------------------------------------------------------------------------------------------
# activation cache
# ----------------------------------------------------------------------------------------------------


def cache_path_for(batch_path, backend_name):
    """``dir/SAMPLE.npz`` -> ``dir/SAMPLE.<backend>.acts.npz``."""
    batch_path = Path(batch_path)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backend_name)
    stem = batch_path.name[: -len(".npz")] if batch_path.name.endswith(".npz") else batch_path.name
    return batch_path.with_name(f"{stem}.{safe}.acts.npz")


def _cache_key(batch_path, fingerprint, resize_to=None):
    """The dict a cache file must hold to stand for the batch at `batch_path` under these weights."""
    key = {"format": CACHE_FORMAT, "backend": fingerprint, "source": file_fingerprint(batch_path)}
    if resize_to is not None:  # resized images give other activations (absent: as before, old caches hold)
        key["resize_to"] = [int(v) for v in resize_to]
    return key


def _load_cache(cache, key):
    """The `BatchFeatures` cached in file `cache` under `key`, or None (missing, stale or unreadable)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            if json.loads(str(data["meta"])) != key:
                return None
            acts = {k: data[k] for k in FEATURE_KEYS}
            stats = {
                "pool": (data["mu"], data["sigma"]),
                "spatial": (data["mu_s"], data["sigma_s"]),
            }
    except Exception:  # unreadable / stale format: recompute
        return None
    return BatchFeatures(acts=acts, stats=stats)


def _save_cache(cache, key, feats):
    arrays = dict(feats.acts)
    arrays.update(
        mu=feats.stats["pool"][0],
        sigma=feats.stats["pool"][1],
        mu_s=feats.stats["spatial"][0],
        sigma_s=feats.stats["spatial"][1],
        meta=np.array(json.dumps(key)),
    )
    try:
        atomic_write(str(cache), lambda f: np.savez(f, **arrays))
    except OSError as exc:  # a cache is an optimisation: a read-only folder must not fail the evaluation
        warnings.warn(f"cannot write activation cache {cache}: {exc}", RuntimeWarning)

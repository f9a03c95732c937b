"""Per-batch activations and their on-disk cache, kept in a user cache folder and never beside the batches.

The folder is the evaluator's ``--cache_dir``, else ``$PAG_EVAL_CACHE``, else ``pag_adm/activations`` under the
user cache (``$XDG_CACHE_HOME`` or ``~/.cache``): scoring against a reference in the source tree or in a
read-only dataset folder writes nothing there. Each batch has one entry per backend (and resize target); the
entry records the key it was made under (the backend's weights and the batch file's fingerprint), so a changed
batch or other weights recompute. An unreadable or stale entry is recomputed, an unwritable folder only warned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from guided_diffusion.runtime.files import atomic_write, file_fingerprint

from .backends import FEATURE_KEYS
from .user_cache import user_cache_root

CACHE_FORMAT = 2  # 2: entries in the cache folder, keyed by the batch's resolved path as well
CACHE_ENV_VAR = "PAG_EVAL_CACHE"

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


def resolve_cache_dir(cache_dir=None):
    """The activation-cache folder: `cache_dir`, else ``$PAG_EVAL_CACHE``, else ``<user cache>/activations``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV_VAR)
    return Path(chosen).expanduser() if chosen else user_cache_root() / "activations"


def cache_path_for(batch_path, backend_name, cache_dir=None, resize_to=None):
    """``.../SAMPLE.npz`` -> ``<cache folder>/SAMPLE.<backend>.<path hash>.acts.npz``.

    The name holds a hash of the batch's resolved path, not of its content: hashing a whole 10 GB batch at
    each lookup would cost a full read, while the entry's key (size, mtime and the hashes of the first and
    last MiB) changes whenever the file is rewritten. One entry per path also means a rewritten batch
    replaces its stale entry instead of leaving a gigabyte-sized orphan; a copy elsewhere gets its own.
    """
    slot = [str(Path(batch_path).resolve()), None if resize_to is None else [int(v) for v in resize_to]]
    return resolve_cache_dir(cache_dir) / f"{entry_stem(batch_path, backend_name, slot)}.acts.npz"


def entry_stem(batch_path, backend_name, slot):
    """``SAMPLE.<backend>.<hash of slot>`` for a cache entry of the batch ``.../SAMPLE.npz``: readable names, and
    one entry per `slot` (a JSON-able value naming what the entry is for, e.g. the batch's resolved path)."""
    name = Path(batch_path).name
    stem = name[: -len(".npz")] if name.endswith(".npz") else name
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backend_name)
    digest = hashlib.sha256(json.dumps(slot, sort_keys=True).encode()).hexdigest()[:16]
    return f"{stem}.{safe}.{digest}"


def cache_key(batch_path, fingerprint, resize_to=None):
    """The dict a cache entry must hold to stand for the batch at `batch_path` under these weights."""
    key = {
        "format": CACHE_FORMAT,
        "backend": fingerprint,
        "path": str(Path(batch_path).resolve()),
        "source": file_fingerprint(batch_path),
    }
    if resize_to is not None:  # resized images give other activations
        key["resize_to"] = [int(v) for v in resize_to]
    return key


def cache_entry(batch_path, backend_name, fingerprint, cache_dir=None, resize_to=None):
    """``(cache file, key)`` of a batch under a backend with weights `fingerprint`. Taken before any activations
    are computed, so that a batch rewritten meanwhile is not cached under its new key."""
    return (cache_path_for(batch_path, backend_name, cache_dir, resize_to),
            cache_key(batch_path, fingerprint, resize_to))


def load_cache(cache, key):
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


def save_cache(cache, key, feats):
    arrays = dict(feats.acts)
    arrays.update(
        mu=feats.stats["pool"][0],
        sigma=feats.stats["pool"][1],
        mu_s=feats.stats["spatial"][0],
        sigma_s=feats.stats["spatial"][1],
        meta=np.array(json.dumps(key)),
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(cache), lambda f: np.savez(f, **arrays))
    except OSError as exc:  # a cache is an optimisation: an unwritable folder must not fail the evaluation
        warnings.warn(
            f"cannot write activation cache {cache}: {exc}; set --cache_dir or ${CACHE_ENV_VAR} to a writable "
            "folder, or pass --no_cache",
            RuntimeWarning,
        )

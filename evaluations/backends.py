"""Feature backends: what turns a batch of images into the activations the metrics need.

A backend is any object with

* ``name`` (str): used in messages, in the ``--backend`` flag and in activation-cache file names;
* ``compute(batch) -> dict``: ``batch`` is a uint8 array ``[B, H, W, 3]`` (values 0..255); the result
  maps ``"pool"`` to ``[B, D_pool]`` (FID, precision/recall), ``"spatial"`` to ``[B, D_spatial]`` (sFID)
  and ``"probs"`` to ``[B, C]`` class probabilities (Inception Score), all float32;
* optionally ``fingerprint()`` (str): identifies the weights, so caches made with other weights are not
  reused (defaults to ``name``).

Register a factory under a name with :func:`register_backend`; :func:`create_backend` builds one by
name, and the evaluator also accepts a backend object directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Dict

import numpy as np

FEATURE_KEYS = ("pool", "spatial", "probs")

__all__ = [
    "FEATURE_KEYS",
    "FeatureBackend",
    "register_backend",
    "create_backend",
    "available_backends",
    "backend_fingerprint",
    "check_features",
]


class FeatureBackend(ABC):
    """Base class for feature backends (subclassing it is optional; see the module docstring)."""

    name: str = "unnamed"

    @abstractmethod
    def compute(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Features of a uint8 ``[B, H, W, 3]`` batch: ``{"pool", "spatial", "probs"}`` arrays."""

    def fingerprint(self) -> str:
        return self.name

    def close(self) -> None:
        """Release resources (sessions, GPU memory)."""


BackendFactory = Callable[..., FeatureBackend]
_REGISTRY: Dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory, *, overwrite: bool = False) -> None:
    """Make ``factory`` available as ``--backend name``.

    The factory is called with keyword options (currently ``graph_path``, which may be ``None``) and
    should accept and ignore options it does not use (``**kwargs``).
    """
    if not overwrite and name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"a feature backend named {name!r} is already registered")
    _REGISTRY[name] = factory


def available_backends():
    return sorted(_REGISTRY)


def create_backend(name: str, **options) -> FeatureBackend:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown feature backend {name!r}; available: {', '.join(available_backends()) or 'none'}"
        )
    return _REGISTRY[name](**options)


def backend_fingerprint(backend) -> str:
    fp = getattr(backend, "fingerprint", None)
    return str(fp()) if callable(fp) else str(backend.name)


def check_features(backend_name: str, feats, batch_len: int) -> Dict[str, np.ndarray]:
    """Validate a backend's output for one batch and return it as float32 2-D arrays."""
    if not isinstance(feats, dict):
        raise TypeError(f"backend {backend_name!r} must return a dict, got {type(feats).__name__}")
    out = {}
    for key in FEATURE_KEYS:
        if key not in feats:
            raise ValueError(f"backend {backend_name!r} returned no {key!r} features")
        arr = np.asarray(feats[key], dtype=np.float32)
        if arr.shape[0] != batch_len:
            raise ValueError(
                f"backend {backend_name!r} returned {arr.shape[0]} rows of {key!r} for a batch of "
                f"{batch_len} images"
            )
        out[key] = arr.reshape(batch_len, -1)
    return out


def _inception_factory(graph_path=None, **_unused) -> FeatureBackend:
    from .inception import InceptionGraphBackend

    return InceptionGraphBackend(graph_path)


register_backend("inception", _inception_factory)

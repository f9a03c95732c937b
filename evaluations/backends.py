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

import importlib
import inspect

import numpy as np

from .backend_base import FeatureBackend

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


_REGISTRY = {}  # name -> factory: a callable returning a backend, or its "module:function" path


def register_backend(name, factory):
    """Make ``factory`` available as ``--backend name`` (re-registering a name replaces it).

    ``factory`` is a callable returning a backend, or a ``"package.module:function"`` string that is
    imported only when the backend is first created.  It is called with the keyword options it
    accepts among those the evaluator passes (currently ``graph_path``, the ``--inception_graph`` flag,
    which may be ``None``).
    """
    _REGISTRY[name] = factory


def available_backends():
    return sorted(_REGISTRY)


def _resolve_factory(factory):
    """The callable `factory` stands for (a "module:function" string is imported)."""
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    return factory


def _accepted_options(factory, options):
    """The entries of dict `options` that `factory` takes as keywords (all where it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return options
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return options
    names = {p.name for p in params}
    return {k: v for k, v in options.items() if k in names}


def create_backend(name, **options):
    """Build the backend registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown feature backend {name!r}; available: {', '.join(available_backends()) or 'none'}"
        )
    factory = _resolve_factory(_REGISTRY[name])
    return factory(**_accepted_options(factory, options))


def backend_fingerprint(backend):
    fp = getattr(backend, "fingerprint", None)
    return str(fp()) if callable(fp) else str(backend.name)


def check_features(backend_name, feats, batch_len):
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


def _inception_factory(graph_path=None):
    from .inception import InceptionGraphBackend

    return InceptionGraphBackend(graph_path)


register_backend("inception", _inception_factory)
register_backend("digits", "evaluations.digits_features:DigitsFeatureBackend")
register_backend("fashion", "evaluations.fashion_features:FashionFeatureBackend")
register_backend("fashion_resnet", "evaluations.fashion_resnet_features:FashionResNetFeatureBackend")

"""The user's cache folder for the evaluator's downloaded and derived files (Inception graph, activations)."""

import os
from pathlib import Path


def user_cache_root():
    """``$XDG_CACHE_HOME/pag_adm``, else ``~/.cache/pag_adm``: outside any checkout or dataset folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "pag_adm"

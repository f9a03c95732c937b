"""The feature-backend base class, apart from the registry so that backends can subclass it without
importing the registry that builds them (see :mod:`evaluations.backends` for the interface)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict

import numpy as np


class FeatureBackend(ABC):
    """Base class for feature backends (subclassing it is optional; the interface is described in
    :mod:`evaluations.backends`)."""

    name: str = "unnamed"

    @abstractmethod
    def compute(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Features of a uint8 ``[B, H, W, 3]`` batch: ``{"pool", "spatial", "probs"}`` arrays."""

    def fingerprint(self) -> str:
        return self.name

    def close(self) -> None:
        """Release resources (sessions, GPU memory)."""

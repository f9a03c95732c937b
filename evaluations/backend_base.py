"""The feature-backend base class, apart from the registry so that backends can subclass it without
importing the registry that builds them (see :mod:`evaluations.backends` for the interface)."""

from abc import ABC, abstractmethod


class FeatureBackend(ABC):
    """Base class for feature backends (subclassing it is optional; the interface is described in
    :mod:`evaluations.backends`)."""

    name = "unnamed"

    @abstractmethod
    def compute(self, batch):
        """Features of a uint8 ``[B, H, W, 3]`` batch: ``{"pool", "spatial", "probs"}`` arrays."""

    def fingerprint(self):
        return self.name

    def close(self):  # noqa: B027 - optional for backends: most hold nothing to release
        """Release resources (sessions, GPU memory)."""

"""Timestep samplers for training: uniform, or loss-aware importance sampling (Nichol & Dhariwal, 2021).

A sampler draws the timesteps of a batch from a distribution `p` over the diffusion's steps and returns
importance weights `1 / (T p_t)`, so the weighted loss keeps the mean of the uniform objective.

`LossSecondMomentResampler` follows the release: it keeps the last 10 losses of every timestep, samples
uniformly until every timestep has its full history, and then samples `p_t` proportional to the root mean
square of that history, mixed with 0.1% of the uniform distribution. Under `torch.distributed` the losses
of all ranks are gathered before the update, so every rank keeps the same history.

Each sampler draws from its own `numpy.random.Generator`; `state_dict()` captures the generator and the
history, which is what makes a resumed training run repeat an uninterrupted one.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist

from guided_diffusion.runtime import distributed as dist_util

SAMPLER_NAMES = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name, diffusion, seed=None):
    """The sampler called `name` ("uniform" or "loss-second-moment") for `diffusion`."""
    if name == "uniform":
        return UniformSampler(diffusion, seed=seed)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion, seed=seed)
    raise NotImplementedError(f"unknown schedule sampler {name!r}: use one of {', '.join(SAMPLER_NAMES)}")


class ScheduleSampler(ABC):
    """A distribution over the diffusion's timesteps, sampled with importance weights."""

    def __init__(self, diffusion, seed=None):
        self.diffusion = diffusion
        self.num_timesteps = diffusion.num_timesteps
        self.seed(seed)

    def seed(self, seed=None):
        """Restart the sampler's random stream; `None` draws the seed from numpy's global generator."""
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def weights(self):
        """Positive, not necessarily normalised, float64 weights, one per timestep."""

    def sample(self, batch_size, device):
        """(timesteps [batch_size] long, importance weights [batch_size] float32) on `device`."""
        w = np.asarray(self.weights(), dtype=np.float64)
        p = w / w.sum()
        indices = self.rng.choice(len(p), size=(batch_size,), p=p)
        weights = 1.0 / (len(p) * p[indices])
        return (torch.from_numpy(indices).long().to(device),
                torch.from_numpy(weights).float().to(device))

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion, seed=None):
        super().__init__(diffusion, seed)
        self._weights = np.ones([self.num_timesteps], dtype=np.float64)

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    def update_with_local_losses(self, local_ts, local_losses):
        """Update with this rank's (timesteps, losses); under torch.distributed, every rank must call it."""
        if dist_util.is_distributed() and dist_util.world_size() > 1:
            ts, losses = _all_gather_ragged(local_ts.detach(), local_losses.detach())
        else:
            ts, losses = local_ts.detach(), local_losses.detach()
        self.update_with_all_losses(ts.cpu().tolist(), losses.float().cpu().tolist())

    @abstractmethod
    def update_with_all_losses(self, ts, losses):
        """Update the weights from the losses of all ranks (identical arguments on every rank)."""


def _all_gather_ragged(ts, losses):
    """Concatenate every rank's 1-D `ts` and `losses` (whose lengths may differ), in rank order."""
    world = dist_util.world_size()
    size = torch.tensor([len(ts)], dtype=torch.int64, device=ts.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded_ts = torch.zeros(longest, dtype=torch.int64, device=ts.device)
    padded_ts[:len(ts)] = ts
    padded_losses = torch.zeros(longest, dtype=torch.float64, device=ts.device)
    padded_losses[:len(losses)] = losses.to(device=ts.device, dtype=torch.float64)
    all_ts = [torch.zeros_like(padded_ts) for _ in range(world)]
    all_losses = [torch.zeros_like(padded_losses) for _ in range(world)]
    dist.all_gather(all_ts, padded_ts)
    dist.all_gather(all_losses, padded_losses)
    return (torch.cat([t[:n] for t, n in zip(all_ts, sizes)]),
            torch.cat([loss[:n] for loss, n in zip(all_losses, sizes)]))


class LossSecondMomentResampler(LossAwareSampler):
    """Sample timesteps in proportion to the RMS of their recent losses (after a uniform warm-up)."""

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001, seed=None):
        super().__init__(diffusion, seed)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([self.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([self.num_timesteps], dtype=np.int64)

    def warmed_up(self):
        return bool((self._loss_counts == self.history_per_term).all())

    def weights(self):
        if not self.warmed_up():
            return np.ones([self.num_timesteps], dtype=np.float64)
        rms = np.sqrt(np.mean(self._loss_history ** 2, axis=-1))
        return rms / rms.sum() * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            count = self._loss_counts[t]
            if count == self.history_per_term:  # full: drop the oldest, append the newest
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, count] = loss
                self._loss_counts[t] = count + 1

    def state_dict(self):
        state = super().state_dict()
        state.update(loss_history=torch.from_numpy(self._loss_history.copy()),
                     loss_counts=torch.from_numpy(self._loss_counts.copy()))
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        history = np.asarray(state["loss_history"], dtype=np.float64)
        if history.shape != self._loss_history.shape:
            raise ValueError(f"loss history of shape {history.shape} does not fit {self._loss_history.shape}")
        self._loss_history = history.copy()
        self._loss_counts = np.asarray(state["loss_counts"], dtype=np.int64).copy()

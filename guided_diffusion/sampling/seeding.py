"""Per-image randomness: image i's initial noise, step noise and class label depend on (seed, i) alone.

The released sampling scripts seed each process with `seed + rank` and draw noise for a whole batch, so a
sample depends on the number of processes and on the batch size. Here every image owns its random
streams, derived from `(seed, index)` with numpy's `SeedSequence` (spawn keys keep the streams of
different images and of different purposes apart):

- noise: a CPU `torch.Generator` per image draws x_T first, then the noise of each sampling step in step
  order; the draws are moved to the sampling device afterwards, so GPUs get the same numbers as CPUs;
- labels: either one draw per image from its own label stream, or (`balanced=True`) a fixed
  permutation of `num_samples / num_classes` copies of every class, the same for any process layout.
- measurement noise (scripts/inverse_sample.py): a CPU `torch.Generator` per image on its own stream.

Only the raw 64-bit output of numpy's PCG64 is used for labels (bit generators' streams are stable across
numpy versions, `Generator` methods' are not).
"""

import concurrent.futures
import os

import numpy as np
import torch

_NOISE_STREAM = 0
_LABEL_STREAM = 1
_BALANCED_STREAM = 2
# The measurement noise y = A x + sigma_y * n of scripts/inverse_sample.py.
MEASUREMENT_STREAM = 16


def _seed_sequence(seed, *key):
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be a non-negative integer below 2**63, got {seed}")
    return np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))


def image_noise_seed(seed, index, stream=_NOISE_STREAM):
    """The 64-bit seed of image `index`'s torch generator for `stream` (default: x_T and step noise)."""
    low, high = _seed_sequence(seed, index, stream).generate_state(2, np.uint32)
    return int(low) | (int(high) << 32)


class ImageNoise:
    """Noise for a batch of images, each drawn from its own generator in a fixed order.

    `initial()` gives x_T; `step(i)` the noise of sampling step i (i counting down, as the sampling loops
    do). Every image's stream is consumed in the same order whatever batch it lands in, so a row's noise
    depends on (seed, index) only. `shape` is one image's shape, [C, H, W].

    The draws run on the CPU (the same numbers for every device). With `prefetch` (the default off the
    CPU) the next draw is made by background threads, one task per image, while the device computes the
    current step; each generator still makes its draws one after another, so the numbers do not change.
    """

    def __init__(self, seed, indices, shape, device="cpu", prefetch=None):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(image_noise_seed(seed, i)) for i in indices]
        self.last_step = None
        self.prefetch = self.device.type != "cpu" if prefetch is None else prefetch
        self.pending = self._submit() if self.prefetch else None

    def _draw_one(self, generator):
        return torch.randn(self.shape, generator=generator, dtype=torch.float32)

    def _submit(self):
        return [_pool().submit(self._draw_one, g) for g in self.generators]

    def _draw(self):
        if self.prefetch:
            draws = [future.result() for future in self.pending]
            self.pending = self._submit()  # only after every generator finished its previous draw
        else:
            draws = [self._draw_one(g) for g in self.generators]
        batch = torch.stack(draws)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def initial(self):
        if self.last_step is not None:
            raise RuntimeError("x_T must be drawn before any step noise")
        self.last_step = float("inf")
        return self._draw()

    def step(self, i):
        # The draws are only reproducible when every image's stream is consumed in step order.
        if self.last_step is None or not i < self.last_step:
            raise RuntimeError(f"step noise must be drawn after x_T and in decreasing step order (got step {i} "
                               f"after {self.last_step})")
        self.last_step = i
        return self._draw()


_executor = None


def _pool():
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                          thread_name_prefix="image-noise")
    return _executor


def _raw64(seed_sequence, count=1):
    return np.random.PCG64(seed_sequence).random_raw(count)


def random_labels(seed, indices, num_classes):
    """One uniform class per image from its own stream (modulo bias below 1e-16 for 1000 classes)."""
    return np.array([int(_raw64(_seed_sequence(seed, i, _LABEL_STREAM))[0] % num_classes) for i in indices],
                    dtype=np.int64)


def balanced_label_table(seed, num_samples, num_classes):
    """Labels for images 0..num_samples-1 with exactly num_samples / num_classes images per class."""
    if num_samples % num_classes:
        raise ValueError(f"balanced classes need num_samples divisible by {num_classes}, got {num_samples}")
    keys = _raw64(_seed_sequence(seed, _BALANCED_STREAM), num_samples)
    order = np.argsort(keys, kind="stable")
    return np.repeat(np.arange(num_classes, dtype=np.int64), num_samples // num_classes)[order]


class LabelSource:
    """Class labels by image index: random per image, balanced, or none (unconditional, no classifier)."""

    def __init__(self, seed, num_samples, num_classes=None, balanced=False):
        self.seed, self.num_classes, self.balanced = seed, num_classes, balanced
        if balanced and num_classes is None:
            raise ValueError("balanced classes need class labels (a class-conditional model or a classifier)")
        self.table = balanced_label_table(seed, num_samples, num_classes) if balanced else None

    @property
    def enabled(self):
        return self.num_classes is not None

    def labels(self, indices):
        if not self.enabled:
            return None
        if self.table is not None:
            return self.table[np.asarray(indices, dtype=np.int64)]
        return random_labels(self.seed, indices, self.num_classes)

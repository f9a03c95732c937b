"""Per-image seeding: initial and step noise and labels depend on the seed and the image index alone."""

import numpy as np
import pytest
import torch

from guided_diffusion.sampling.seeding import (
    MEASUREMENT_STREAM,
    ImageNoise,
    LabelSource,
    balanced_label_table,
    image_noise_seed,
    random_labels,
)


def draw(seed, indices, steps=(3, 2, 1), prefetch=False):
    noise = ImageNoise(seed, indices, (3, 4, 4), prefetch=prefetch)
    return [noise.initial()] + [noise.step(i) for i in steps]


def test_noise_of_an_image_does_not_depend_on_its_batch():
    together = draw(5, [0, 1, 2, 3])
    apart = [draw(5, [i]) for i in range(4)]
    reordered = draw(5, [3, 1])
    prefetched = draw(5, [0, 1, 2, 3], prefetch=True)  # background draws (the default on GPUs)
    for k in range(4):
        assert torch.equal(together[k], torch.cat([a[k] for a in apart]))
        assert torch.equal(reordered[k], together[k][[3, 1]])
        assert torch.equal(prefetched[k], together[k])


def test_noise_streams_differ_between_images_steps_and_seeds():
    x_t, step3, _, _ = draw(0, [0, 1])
    assert not torch.equal(x_t[0], x_t[1])
    assert not torch.equal(x_t[0], step3[0])
    assert not torch.equal(draw(1, [0])[0], x_t[:1])
    assert image_noise_seed(0, 1) != image_noise_seed(1, 0)


def test_image_noise_seed_streams():
    for seed, index in [(0, 0), (5, 3), (2**40 + 1, 1234)]:
        for stream in (0, MEASUREMENT_STREAM):
            low, high = np.random.SeedSequence(seed, spawn_key=(index, stream)).generate_state(2, np.uint32)
            assert image_noise_seed(seed, index, stream) == int(low) | (int(high) << 32)
        assert image_noise_seed(seed, index) == image_noise_seed(seed, index, 0)
        assert image_noise_seed(seed, index, MEASUREMENT_STREAM) != image_noise_seed(seed, index)
    for seed in (-1, 2**63):
        with pytest.raises(ValueError, match="seed must be"):
            image_noise_seed(seed, 0, MEASUREMENT_STREAM)


def test_step_noise_must_follow_x_t_in_step_order():
    noise = ImageNoise(0, [0], (1,))
    with pytest.raises(RuntimeError):
        noise.step(3)
    noise.initial()
    noise.step(3)
    with pytest.raises(RuntimeError):
        noise.step(3)


def test_random_labels_come_from_seed_and_index_alone():
    labels = random_labels(7, range(200), 1000)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 1000
    assert len(set(labels.tolist())) > 150
    assert np.array_equal(random_labels(7, [150, 3], 1000), labels[[150, 3]])
    assert not np.array_equal(random_labels(8, range(200), 1000), labels)


def test_balanced_labels_give_exactly_50_per_class_for_50k():
    table = balanced_label_table(0, 50000, 1000)
    assert np.array_equal(np.bincount(table, minlength=1000), np.full(1000, 50))
    assert not np.array_equal(table[:1000], np.sort(table[:1000]))  # shuffled, not grouped by class
    assert np.array_equal(balanced_label_table(0, 50000, 1000), table)
    source = LabelSource(0, 50000, 1000, balanced=True)
    assert np.array_equal(source.labels([49999, 0]), table[[49999, 0]])
    with pytest.raises(ValueError, match="divisible"):
        balanced_label_table(0, 1500, 1000)


def test_label_source_without_classes():
    assert LabelSource(0, 10).labels([1, 2]) is None
    with pytest.raises(ValueError, match="class labels"):
        LabelSource(0, 1000, None, balanced=True)

"""The sampler's batches, at full float precision: a row does not depend on its batch."""

import numpy as np
import pytest
import torch

from guided_diffusion.sampling.seeding import LabelSource

from conftest import tiny_adm


@pytest.fixture(scope="module")
def tiny_model():
    model, diffusion = tiny_adm(weights_seed=0, learn_sigma=True, class_cond=True, timestep_respacing="3")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: several threads only contend on a shared CPU (100x slower here)
    yield model.eval(), diffusion
    torch.set_num_threads(threads)


@pytest.mark.parametrize("use_ddim", [False, True])
def test_a_row_is_bit_identical_in_any_batch_even_alone(tiny_model, use_ddim):
    from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
    from guided_diffusion.sampling.images import sample_images

    model, diffusion = tiny_model
    guidance = [PerturbedAttentionGuidance(scale=2.0, layers=["middle_block.1"]),
                SelfAttentionGuidance(scale=0.5, layer="output_blocks.1.1", blur_sigma=1.0)]
    labels = LabelSource(0, 10, 1000)

    def run(indices):
        return sample_images(model, diffusion, indices, seed=4, image_size=16, labels=labels.labels(indices),
                             use_ddim=use_ddim, eta=0.7, guidance=guidance)

    batch = run([5, 6, 7])
    assert torch.equal(run([7, 5])[[1, 0]], batch[[0, 2]])
    # A batch of one is padded on CPU: unpadded, its conv kernels differ in the last bits from a batch's.
    assert torch.equal(run([6])[0], batch[1])


def test_batches_and_the_single_row_padding():
    from guided_diffusion.sampling.images import batch_invariant_fit, batches

    split = batches(np.arange(7), 3)
    assert [b.tolist() for b in split] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches(np.arange(0), 3) == []
    row, pair = torch.randn(1, 2), torch.randn(2, 2)
    assert torch.equal(batch_invariant_fit(1, "cpu")(row), torch.cat([row, row]))
    assert torch.equal(batch_invariant_fit(1, torch.device("cpu"))(row), torch.cat([row, row]))
    assert batch_invariant_fit(2, "cpu")(pair) is pair
    assert batch_invariant_fit(1, "meta")(row) is row  # off the CPU a batch of one is left alone


def test_sample_uint8_is_sample_images_in_batches_with_each_image_its_label(tiny_model):
    from guided_diffusion.data.image_io import to_uint8
    from guided_diffusion.sampling.images import sample_images, sample_uint8

    model, diffusion = tiny_model
    indices = np.array([3, 8, 1, 4, 9])
    labels = LabelSource(2, 10, 1000).labels(indices)
    images = sample_uint8(model, diffusion, indices, 2, labels=labels, seed=2, image_size=16)
    whole = to_uint8(sample_images(model, diffusion, indices, seed=2, image_size=16, labels=labels)).numpy()
    assert images.dtype == np.uint8 and images.shape == (5, 16, 16, 3)
    assert np.array_equal(images, whole)
    shuffled = sample_uint8(model, diffusion, indices[::-1], 3, labels=labels[::-1], seed=2, image_size=16)
    assert np.array_equal(shuffled[::-1], whole)  # each image keeps its own label in any order and batch

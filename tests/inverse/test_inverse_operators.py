"""Degradation operators (adjoints, shapes, masks, noise) and restoration metrics of guided_diffusion.inverse."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from guided_diffusion.inverse import metrics
from guided_diffusion.inverse.operators import (
    OPERATOR_NAMES,
    PADDINGS,
    Blur,
    box_mask,
    create_operator,
    gaussian_kernel,
    random_mask,
    uniform_kernel,
)

BLURS = ("gaussian_blur", "uniform_blur")

pytestmark = pytest.mark.usefixtures("one_thread")


def _all_operators(image_size=16):
    for name in OPERATOR_NAMES:
        for padding in PADDINGS if name in BLURS else ("reflect",):
            yield name, padding, create_operator(name, image_size, padding=padding, seed=3)


def _inner(a, b):
    return float((a * b).sum())


@pytest.mark.parametrize("name,padding,op", list(_all_operators()), ids=lambda v: v if isinstance(v, str) else "")
def test_adjoint_identity_in_float64(name, padding, op):
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
        y = torch.randn(op.measurement_shape(x.shape), generator=g, dtype=torch.float64)
        lhs, rhs = _inner(op.forward(x), y), _inner(x, op.adjoint(y))
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), (name, padding, lhs, rhs)
        assert op.forward(x).dtype == op.adjoint(y).dtype == torch.float64


@pytest.mark.parametrize("padding", PADDINGS)
def test_blur_adjoint_on_non_square_images_and_large_kernels(padding):
    g = torch.Generator().manual_seed(1)
    op = Blur(gaussian_kernel(9, 2.0), padding)
    x = torch.randn(1, 2, 10, 14, generator=g, dtype=torch.float64)
    y = torch.randn(1, 2, 10, 14, generator=g, dtype=torch.float64)
    assert abs(_inner(op.forward(x), y) - _inner(x, op.adjoint(y))) < 1e-12


@pytest.mark.parametrize("padding", PADDINGS)
def test_blur_is_padded_cross_correlation(padding):
    g = torch.Generator().manual_seed(2)
    kernel = torch.rand(5, 5, generator=g, dtype=torch.float64)  # not symmetric: catches flips
    op = Blur(kernel, padding)
    x = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    mode = "constant" if padding == "zeros" else padding
    expected = F.conv2d(F.pad(x, [2, 2, 2, 2], mode=mode), kernel.expand(3, 1, 5, 5), groups=3)
    torch.testing.assert_close(op.forward(x), expected, rtol=0, atol=1e-12)


def test_shapes_and_image_views():
    x = torch.randn(2, 3, 16, 16)
    for name, _, op in _all_operators():
        y = op.forward(x)
        assert tuple(y.shape) == op.measurement_shape(x.shape)
        assert op.to_image(y).shape == x.shape
        assert op.name == name and op.describe()["name"] == name
    sr = create_operator("super_resolution", 16, scale_factor=4)
    assert sr.forward(x).shape == (2, 3, 4, 4)
    y = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(sr.forward(sr.adjoint(y)), y / 16)  # A A^T = I / s^2
    torch.testing.assert_close(sr.forward(sr.to_image(y)), y)  # the view is consistent with y


def test_kernels_preserve_constants():
    for kernel in (gaussian_kernel(61, 3.0), gaussian_kernel(5, 1.0), uniform_kernel(9)):
        assert abs(float(kernel.sum()) - 1) < 1e-12
        assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.t())
    x = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    for padding in ("reflect", "circular", "replicate"):
        torch.testing.assert_close(create_operator("gaussian_blur", 16, padding=padding).forward(x), x)


def test_box_mask():
    mask = box_mask(16, 8)
    assert int((mask == 0).sum()) == 64 and bool((mask[4:12, 4:12] == 0).all())
    op = create_operator("inpaint_box", 256)  # DPS: a 128-pixel box in a 256 image
    assert op.observed_fraction == 1 - 128**2 / 256**2
    moved = box_mask(16, 6, position="random", seed=5)
    assert int((moved == 0).sum()) == 36
    assert torch.equal(moved, box_mask(16, 6, position="random", seed=5))
    assert any(not torch.equal(moved, box_mask(16, 6, position="random", seed=s)) for s in range(6, 10))


def test_random_mask_fraction_and_seed():
    mask = random_mask(16, 0.7, seed=1)
    assert int((mask == 0).sum()) == round(0.7 * 256)
    assert torch.equal(mask, random_mask(16, 0.7, seed=1))
    assert not torch.equal(mask, random_mask(16, 0.7, seed=2))
    op = create_operator("inpaint_random", 16, mask_ratio=0.25, seed=1)
    x = torch.randn(2, 3, 16, 16)
    y = op.forward(x)
    missing = op.mask == 0
    assert bool((y[..., missing] == 0).all()) and torch.equal(y[..., ~missing], x[..., ~missing])
    assert abs(op.observed_fraction - 0.75) < 1 / 256


def test_measurement_noise():
    x = torch.zeros(4, 3, 32, 32)
    blur = create_operator("gaussian_blur", 32)
    y = blur.measure(x, 0.05, generator=torch.Generator().manual_seed(0))
    assert abs(float(y.std()) - 0.05) < 0.005
    assert torch.equal(y, blur.measure(x, 0.05, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(blur.measure(x, 0.0), blur.forward(x))
    noise = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(blur.measure(x, 0.1, noise=noise), 0.1 * noise)
    box = create_operator("inpaint_box", 32)
    y = box.measure(x, 0.05, noise=noise)
    assert bool((y[..., box.mask == 0] == 0).all())  # missing pixels are not measured, not even noise
    with pytest.raises(ValueError, match="noise of shape"):
        create_operator("super_resolution", 32).measure(x, 0.05, noise=noise)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="gaussian_blur", kernel_size=4), "odd"),
    (dict(name="gaussian_blur", kernel_size=41), "reflect padding"),
    (dict(name="super_resolution", scale_factor=3), "divisible"),
    (dict(name="inpaint_box", mask_size=17), "mask_size"),
    (dict(name="inpaint_random", mask_ratio=1.0), "mask_ratio"),
    (dict(name="deblur"), "unknown operator"),
    (dict(name="uniform_blur", padding="mirror"), "unknown padding"),
])
def test_bad_parameters_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_operator(image_size=16, **kwargs)


# --------------------------------------------------------------------------------------------------
# Metrics


def _reference_ssim(x, y, size=11, sigma=1.5):
    """SSIM of one [H, W] channel pair with scipy filters (float64), on the valid positions."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    half = size // 2

    def f(a):
        return ndimage.correlate(a, w, mode="constant")[half:-half, half:-half]

    c1, c2 = 0.01**2, 0.03**2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def test_ssim_matches_a_scipy_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    expected = [np.mean([_reference_ssim(x[b, c].numpy(), y[b, c].numpy()) for c in range(3)]) for b in range(2)]
    np.testing.assert_allclose(metrics.ssim(x, y).numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(metrics.ssim(x, y), metrics.ssim(y, x))
    small = metrics.ssim(x[..., :8, :8], y[..., :8, :8])  # smaller than the window: a 7-tap window
    assert small.shape == (2,) and bool((small < 1).all())


def test_psnr_and_gmsd():
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 0.8
    torch.testing.assert_close(metrics.psnr(x, x + 0.1), torch.full((3,), 20.0, dtype=torch.float64))
    assert bool(torch.isinf(metrics.psnr(x, x)).all())
    assert float(metrics.gmsd(x, x).abs().max()) == 0.0
    blurred = create_operator("gaussian_blur", 16).forward(x)
    assert bool((metrics.gmsd(blurred, x) > 0.01).all())
    noisier = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert bool((metrics.ssim(noisier, x) < metrics.ssim((x + 0.02 * torch.randn_like(x)).clamp(0, 1), x)).all())
    out = metrics.restoration_metrics(blurred, x, with_lpips=False)
    assert set(out) == {"psnr", "ssim", "gmsd"} and len(out["psnr"]) == 3


def test_range_conversions():
    images = np.array([[[[0, 128, 255]]]], dtype=np.uint8)  # [1, 1, 1, 3]
    unit = metrics.uint8_to_unit(images)
    assert unit.shape == (1, 3, 1, 1) and float(unit.max()) == 1.0
    torch.testing.assert_close(metrics.to_unit(torch.tensor([-1.0, 0.0, 1.0, 2.0])),
                               torch.tensor([0.0, 0.5, 1.0, 1.0], dtype=torch.float64))

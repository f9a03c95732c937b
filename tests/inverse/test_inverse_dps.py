"""DPS posterior sampling with PAG / SAG (guided_diffusion.inverse.dps) and scripts/inverse_sample.py.

A tiny random ADM (its zero-initialised layers filled with small noise, so attention and PAG matter)
checks the plumbing exactly; the demo digits model, when its checkpoint is there, checks that DPS fits
the measurements.
"""

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion.guidance import PerturbedAttentionGuidance, SelfAttentionGuidance
from guided_diffusion.inverse import create_operator, dps_sample_loop, measurement_residual
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

from conftest import TINY_ADM, tiny_adm
from programs import assert_ok, cli_flags, run_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "inverse_sample.py"
TINY_FLAGS = dict(TINY_ADM, learn_sigma=True, noise_schedule="cosine", diffusion_steps=100)
TINY_LAYERS = ["input_blocks.3.1", "middle_block.1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(timestep_respacing="6"):
    """The release's seeded initialisation, its zero-initialised layers then filled with small noise (drawing
    every weight anew saturates DPS's samples at +-1, where guidance no longer shows)."""
    with torch.random.fork_rng():
        model, diffusion = tiny_adm(seed=0, **TINY_FLAGS, timestep_respacing=timestep_respacing)
        with torch.no_grad():
            for p in model.parameters():
                if not bool(p.abs().sum()):
                    p.normal_(0, 0.05)
    return model.eval(), diffusion


@pytest.fixture(scope="module")
def tiny():
    model, diffusion = tiny_model()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    op = create_operator("gaussian_blur", 16)
    y = op.measure(x0, 0.05, generator=g)
    x_t = torch.randn(3, 3, 16, 16, generator=g)
    steps = {i: torch.randn(3, 3, 16, 16, generator=g) for i in range(diffusion.num_timesteps)}
    return model, diffusion, op, y, x_t, steps


def _dps(tiny, rows=slice(None), **kwargs):
    model, diffusion, op, y, x_t, steps = tiny
    return dps_sample_loop(diffusion, model, op, y[rows], noise=x_t[rows], step_noise_fn=lambda i: steps[i][rows],
                           **kwargs)


@pytest.mark.parametrize("sampler", [dict(), dict(use_ddim=True, eta=0.5)], ids=["ddpm", "ddim"])
def test_zeta_zero_is_the_plain_sampler(tiny, sampler):
    model, diffusion, op, y, x_t, steps = tiny
    loop = diffusion.ddim_sample_loop if sampler else diffusion.p_sample_loop
    extra = {"eta": sampler["eta"]} if sampler else {}
    guidance = PerturbedAttentionGuidance(scale=2.0, layers=TINY_LAYERS)
    plain = loop(model, tuple(x_t.shape), noise=x_t, step_noise_fn=lambda i: steps[i], guidance=guidance, **extra)
    assert torch.equal(_dps(tiny, zeta=0.0, guidance=guidance, **sampler), plain)


@pytest.mark.parametrize("sampler", [dict(), dict(use_ddim=True)], ids=["ddpm", "ddim"])
def test_pag_scale_zero_equals_no_guidance(tiny, sampler):
    plain = _dps(tiny, zeta=1.0, **sampler)
    assert torch.equal(_dps(tiny, zeta=1.0, guidance=PerturbedAttentionGuidance(scale=0.0, layers=TINY_LAYERS),
                            **sampler), plain)
    assert torch.equal(_dps(tiny, zeta=1.0, guidance=[PerturbedAttentionGuidance(scale=0.0, layers=TINY_LAYERS),
                                                      SelfAttentionGuidance(scale=0.0, layer="middle_block.1")],
                            **sampler), plain)
    pag = _dps(tiny, zeta=1.0, guidance=PerturbedAttentionGuidance(scale=2.0, layers=TINY_LAYERS), **sampler)
    sag = _dps(tiny, zeta=1.0, guidance=SelfAttentionGuidance(scale=1.0, layer="middle_block.1"), **sampler)
    assert (pag - plain).abs().max() > 1e-3 and (sag - plain).abs().max() > 1e-3


def test_images_do_not_depend_on_their_batch(tiny):
    guidance = PerturbedAttentionGuidance(scale=2.0, layers=TINY_LAYERS)
    full = _dps(tiny, zeta=1.0, guidance=guidance)
    assert torch.equal(_dps(tiny, rows=slice(1, 3), zeta=1.0, guidance=guidance), full[1:3])


def test_per_image_step_sizes(tiny):
    mixed = _dps(tiny, zeta=torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(mixed[0], _dps(tiny, zeta=0.0)[0])
    assert torch.equal(mixed[1], _dps(tiny, zeta=1.0)[1])
    assert not torch.equal(mixed[2], mixed[1])


def test_residual_on_raw_or_clipped_x0(tiny):
    raw = _dps(tiny, zeta=1.0, clip_denoised=False, residual_x0="raw")
    assert torch.equal(_dps(tiny, zeta=1.0, clip_denoised=False), raw)  # nothing clamped: the same residual
    assert not torch.equal(_dps(tiny, zeta=1.0, residual_x0="raw"), _dps(tiny, zeta=1.0))
    with pytest.raises(ValueError, match="residual_x0"):
        _dps(tiny, zeta=1.0, residual_x0="soft")


def test_data_consistency_step_lowers_the_residual(tiny):
    model, diffusion, op, y, x_t, steps = tiny
    free = measurement_residual(op, _dps(tiny, zeta=0.0).clamp(-1, 1), y)
    fitted = measurement_residual(op, _dps(tiny, zeta=1.0).clamp(-1, 1), y)
    assert bool((fitted < free).all()), (fitted, free)


def test_shape_checks(tiny):
    model, diffusion, op, y, x_t, steps = tiny
    with pytest.raises(ValueError, match="measurements for a batch"):
        dps_sample_loop(diffusion, model, op, y[:2], noise=x_t)
    with pytest.raises(ValueError, match="measurement of shape"):
        dps_sample_loop(diffusion, model, create_operator("super_resolution", 16), y, noise=x_t)
    with pytest.raises(ValueError, match="unknown attention layer"):
        dps_sample_loop(diffusion, model, op, y, noise=x_t, guidance=PerturbedAttentionGuidance(scale=1.0))


def test_x_t_from_the_shape_and_the_option_checks(tiny):
    from guided_diffusion.inverse import dps_step

    model, diffusion, op, y, x_t, steps = tiny
    with torch.random.fork_rng():
        torch.manual_seed(3)
        drawn = dps_sample_loop(diffusion, model, op, y, shape=tuple(x_t.shape), zeta=1.0, use_ddim=True,
                                progress=True)
        torch.manual_seed(3)
        given = dps_sample_loop(diffusion, model, op, y, noise=torch.randn(*x_t.shape), zeta=1.0, use_ddim=True)
    assert torch.equal(drawn, given)
    with pytest.raises(ValueError, match="give the sample shape"):
        dps_sample_loop(diffusion, model, op, y)
    t = torch.full((3,), 2, dtype=torch.long)
    with pytest.raises(ValueError, match="residual_x0"):
        dps_step(diffusion, model, x_t, t, op, y, residual_x0="soft")
    from guided_diffusion.guidance import ClassifierGuidance

    with pytest.raises(ValueError, match="classifier guidance is not supported"):
        dps_step(diffusion, model, x_t, t, op, y, guidance=ClassifierGuidance(classifier=None, scale=1.0))
    with pytest.raises(ValueError, match="classifier guidance is not supported"):
        dps_sample_loop(diffusion, model, op, y, noise=x_t, guidance=ClassifierGuidance(classifier=None, scale=1.0))


# --------------------------------------------------------------------------------------------------
# The command-line script, on the tiny model


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inverse_cli")
    model, _ = tiny_model("")
    torch.save(model.state_dict(), folder / "tiny.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", arr_0=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    return folder, cli_flags(TINY_FLAGS)


def _cli_flags(cli_inputs, out, *extra):
    folder, flags = cli_inputs
    return ["--model_path", str(folder / "tiny.pt"), "--data", str(folder / "images.npz"),
            "--output_dir", str(out), "--timestep_respacing", "ddim3", "--use_ddim", "True",
            "--progress", "False", *flags, *extra]


def _run_cli(cli_inputs, out, *extra):
    """The script's run() in this process; returns its report."""
    script = runpy.run_path(str(SCRIPT))
    return script["run"](script["parse"](_cli_flags(cli_inputs, out, *extra)))


@pytest.mark.e2e
def test_cli_writes_the_results(cli_inputs, tmp_path):
    # the installed console script, which must exit with status 0
    assert_ok(run_script("pag-inverse-sample", *_cli_flags(cli_inputs, tmp_path / "a", "--operator", "gaussian_blur",
                                                          "--batch_size", "2", "--pag_scale", "1.0",
                                                          "--pag_layers", "middle_block.1")))
    out = tmp_path / "a"
    for name in ("measurements.png", "reconstructions.png", "ground_truth.png", "results.npz", "metrics.json"):
        assert (out / name).is_file(), name
    with np.load(out / "results.npz") as results:
        assert results["arr_0"].shape == (3, 16, 16, 3) and results["arr_0"].dtype == np.uint8
        assert results["ground_truth"].shape == (3, 16, 16, 3)
        assert results["measurement"].shape == (3, 3, 16, 16) and results["measurement"].dtype == np.float32
        recon = results["arr_0"]
    saved = json.loads((out / "metrics.json").read_text())
    psnr = saved["reconstruction"]["psnr"]
    assert psnr["mean"] == pytest.approx(np.mean(psnr["per_image"]))
    assert len(saved["reconstruction"]["ssim"]["per_image"]) == 3
    assert saved["config"]["operator"]["name"] == "gaussian_blur"
    assert saved["config"]["guidance"]["pag_scale"] != 0 and "sag_scale" not in saved["config"]["guidance"]

    # Per-image seeds: another batch size (including a batch of one) gives the same images.
    _run_cli(cli_inputs, tmp_path / "b", "--operator", "gaussian_blur", "--batch_size", "1",
             "--pag_scale", "1.0", "--pag_layers", "middle_block.1")
    with np.load(tmp_path / "b" / "results.npz") as again:
        assert np.array_equal(again["arr_0"], recon)


def test_cli_inpainting_with_sag(cli_inputs, tmp_path):
    report = _run_cli(cli_inputs, tmp_path, "--operator", "inpaint_random", "--mask_ratio", "0.5", "--num_images",
                      "2", "--sag_scale", "0.5", "--sag_layer", "middle_block.1", "--sag_blur_sigma", "1.0")
    guidance = report["config"]["guidance"]
    assert guidance["sag_scale"] == 0.5 and guidance["sag_layer"] == "middle_block.1" and "pag_scale" not in guidance
    with np.load(tmp_path / "results.npz") as results:
        shown = results["measurement_image"]
    observed = shown.astype(int)[:, :, :, 0] != 127  # missing pixels show as 0 in [-1, 1], i.e. grey
    assert 0.4 < observed.mean() < 0.6
    assert report["measurement_residual"]["noise_level"] == pytest.approx(0.05 * (0.5 * 16 * 16 * 3) ** 0.5)


def test_cli_super_resolution_measurement_shape(cli_inputs, tmp_path):
    report = _run_cli(cli_inputs, tmp_path, "--operator", "super_resolution", "--scale_factor", "2",
                      "--num_images", "2", "--residual_x0", "raw")
    assert report["config"]["residual_x0"] == "raw"
    with np.load(tmp_path / "results.npz") as results:
        assert results["measurement"].shape == (2, 3, 8, 8)
        assert results["measurement_image"].shape == (2, 16, 16, 3)


def test_cli_precision_flag_checks(cli_inputs, tmp_path):
    with pytest.raises(SystemExit, match="--use_fp16 True converts the model to fp16"):
        _run_cli(cli_inputs, tmp_path, "--use_fp16", "True", "--precision", "fp32")
    with pytest.raises(SystemExit, match="--precision must be one of"):
        _run_cli(cli_inputs, tmp_path, "--precision", "int8")


# --------------------------------------------------------------------------------------------------
# The demo digits model (trained by scripts/image_train.py; skipped until its checkpoint exists)

DEMO_CHECKPOINT = Path(os.environ.get("PAG_DIGITS_CHECKPOINT", ROOT / "checkpoints" / "digits_adm16_ema.pt"))
DEMO_CONFIG = ROOT / "configs" / "digits" / "model.yaml"
DEMO_LAYERS = ["input_blocks.5.1", "middle_block.1"]  # the deepest input attention and the middle block


@pytest.fixture(scope="module")
def demo():
    if not DEMO_CHECKPOINT.is_file():
        pytest.skip(f"the demo model {DEMO_CHECKPOINT} is not there (train it with scripts/image_train.py "
                    "and configs/digits)")
    import yaml

    from guided_diffusion.data.datasets import to_model_range
    from guided_diffusion.data.digits import load_digits_split
    from guided_diffusion.model.checkpoints import load_checkpoint

    flags = model_and_diffusion_defaults()
    flags.update(yaml.safe_load(DEMO_CONFIG.read_text()), timestep_respacing="ddim25")
    model, diffusion = create_model_and_diffusion(**flags)
    load_checkpoint(model, str(DEMO_CHECKPOINT))
    x0 = to_model_range(load_digits_split(16, "heldout")[0][:8])
    return model.eval(), diffusion, x0


def _demo_run(demo, op, seed=0, **kwargs):
    model, diffusion, x0 = demo
    g = torch.Generator().manual_seed(seed)
    y = op.measure(x0, 0.05, generator=g)
    x_t = torch.randn(x0.shape, generator=g)
    return y, dps_sample_loop(diffusion, model, op, y, noise=x_t, use_ddim=True, residual_x0="raw", **kwargs)


@pytest.mark.slow
def test_demo_dps_fits_blurred_measurements_better_than_the_blurred_input(demo):
    """Gaussian deblurring, 8 held-out digits, 25 DDIM steps, sigma_y = 0.05.

    The blurred measurement itself, taken as an estimate of the image, is inconsistent with y (A y != y);
    DPS must fit y clearly better (every image at most 0.8 times that error), and far better than the
    unconditional samples from the same noise (zeta = 0). The error of the true image is the noise level.
    """
    op = create_operator("gaussian_blur", 16)  # 5x5 kernel, sigma 1
    y, free = _demo_run(demo, op, zeta=0.0)
    _, fitted = _demo_run(demo, op, zeta=2.0)
    degraded = measurement_residual(op, op.to_image(y).clamp(-1, 1), y)
    residual = measurement_residual(op, fitted.clamp(-1, 1), y)
    assert bool((residual < 0.8 * degraded).all()), (residual, degraded)
    assert float(residual.mean()) < 0.25 * float(measurement_residual(op, free.clamp(-1, 1), y).mean())
    _, without = _demo_run(demo, op, zeta=2.0, guidance=PerturbedAttentionGuidance(scale=0.0, layers=DEMO_LAYERS))
    assert torch.equal(without, fitted)


@pytest.mark.slow
def test_demo_dps_with_pag_inpaints_a_box(demo):
    """A centred 8x8 box: DPS beats the masked input in PSNR by a wide margin, PAG (s = 1) changes the
    reconstructions but keeps them ahead of the masked input and consistent with y (residual near the
    noise level; DPS with 25 DDIM steps fits the noise too, so below it)."""
    from guided_diffusion.inverse import metrics

    op = create_operator("inpaint_box", 16, mask_size=8)
    truth = metrics.to_unit(demo[2])
    y, plain = _demo_run(demo, op, zeta=2.0)
    _, pag = _demo_run(demo, op, zeta=2.0, guidance=PerturbedAttentionGuidance(scale=1.0, layers=DEMO_LAYERS))
    masked = float(metrics.psnr(metrics.to_unit(op.to_image(y)), truth).mean())
    noise_level = 0.05 * float(op.mask.sum() * 3) ** 0.5
    assert float(metrics.psnr(metrics.to_unit(plain), truth).mean()) > masked + 3.0
    assert float(metrics.psnr(metrics.to_unit(pag), truth).mean()) > masked + 1.0
    assert (pag - plain).abs().max() > 0.05
    for x_hat in (plain, pag):
        assert float(measurement_residual(op, x_hat.clamp(-1, 1), y).max()) < 1.5 * noise_level

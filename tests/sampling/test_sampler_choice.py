"""DDPM steps on DDIM's step spacing (--timestep_respacing ddimN with --use_ddim False) run, with a warning."""

import argparse
import logging

import pytest
import torch

from guided_diffusion.cli.flags import FlagGroup, check_flags
from guided_diffusion.runtime import distributed
from guided_diffusion.sampling.images import MODEL_FLAGS, USE_DDIM

from conftest import TINY_ADM, tiny_adm
from programs import assert_ok, cli_flags, run_script


def spacing_warnings(stderr):
    return [line for line in stderr.splitlines() if "--use_ddim" in line and "--timestep_respacing" in line]


@pytest.mark.e2e
def test_ddpm_on_a_ddim_spacing_is_named_once_at_startup(tmp_path):
    model, _ = tiny_adm(weights_seed=0)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    flags = [*cli_flags(TINY_ADM), "--model_path", tmp_path / "model.pt", "--timestep_respacing", "ddim4",
             "--num_samples", "2", "--batch_size", "2", "--progress", "False"]
    ddpm = assert_ok(run_script("pag-image-sample", *flags, "--use_ddim", "False", "--output_dir", tmp_path / "ddpm"))
    (warning,) = spacing_warnings(ddpm.stderr)
    # what runs, and what to set for either sampler
    assert "--timestep_respacing ddim4" in warning and "--use_ddim True" in warning
    assert "--timestep_respacing 4" in warning
    assert (tmp_path / "ddpm" / "samples_2x16x16x3.npz").exists()  # a warning, not an error
    ddim = assert_ok(run_script("pag-image-sample", *flags, "--use_ddim", "True", "--output_dir", tmp_path / "ddim"))
    assert spacing_warnings(ddim.stderr) == []


@pytest.mark.parametrize("use_ddim, spacing, warned", [(False, "ddim25", True), (True, "ddim25", False),
                                                       (False, "250", False), (True, "250", False),
                                                       (False, "", False)])
def test_only_ddpm_on_a_ddim_spacing_is_warned_about(caplog, use_ddim, spacing, warned):
    args = argparse.Namespace(**MODEL_FLAGS.defaults(), use_ddim=use_ddim)
    args.timestep_respacing = spacing
    with caplog.at_level(logging.WARNING, logger="guided_diffusion"):
        check_flags(args, [FlagGroup("sampler", [USE_DDIM]), MODEL_FLAGS])
    assert len(spacing_warnings(caplog.text)) == warned


def test_the_warning_comes_from_rank_0_only(caplog, monkeypatch):
    args = argparse.Namespace(**MODEL_FLAGS.defaults(), use_ddim=False)
    args.timestep_respacing = "ddim25"
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="guided_diffusion"):
        check_flags(args, [FlagGroup("sampler", [USE_DDIM]), MODEL_FLAGS])
    assert caplog.text == ""

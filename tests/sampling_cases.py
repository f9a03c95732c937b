"""Run one golden sampling case (p_mean_variance / p_sample / ddim_sample / ddim_sample_loop)."""

import torch

from golden import model_kwargs


def run_case(fx, case, model, diffusion, guidance=None):
    assert sorted(diffusion.use_timesteps) == case["use_timesteps"]
    inputs = {k: fx["inputs"][v] for k, v in case["inputs"].items() if k != "y"}
    kwargs = dict(clip_denoised=case.get("clip_denoised", True), model_kwargs=model_kwargs(fx))
    if guidance is not None:
        kwargs["guidance"] = guidance
    call = case["call"]
    with torch.no_grad():
        if call == "p_mean_variance":
            return diffusion.p_mean_variance(model, inputs["x"], inputs["t"], **kwargs)
        if call == "p_sample":
            return diffusion.p_sample(model, inputs["x"], inputs["t"], step_noise=inputs["step_noise"], **kwargs)
        if call == "ddim_sample":
            return diffusion.ddim_sample(model, inputs["x"], inputs["t"], eta=case["eta"],
                                         step_noise=inputs["step_noise"], **kwargs)
        if call == "ddim_sample_loop":
            noise = inputs["noise"]
            return {"sample": diffusion.ddim_sample_loop(model, tuple(noise.shape), noise=noise, eta=0.0, **kwargs)}
    raise AssertionError(f"unknown call {call}")

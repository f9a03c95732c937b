"""What every sampling script shares: the model flags, loading models at a precision, and `sample_images`,
which samples any set of image indices reproducibly.

Image i's initial noise and step noise come from (seed, i) alone (`seeding.ImageNoise`), so the samples do
not depend on the batch they are drawn in (bit-identical on CPU; see `batch_invariant_fit`).
"""

import argparse

import numpy as np
import torch

from guided_diffusion.cli.flags import Flag, FlagGroup, at_least, raising, required
from guided_diffusion.data.image_io import to_uint8
from guided_diffusion.diffusion.factory import (
    RELEASE_FLAG_HELP,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.guidance.autoguidance import weak_model_flags
from guided_diffusion.model.checkpoints import load_checkpoint
from guided_diffusion.model.precision import PRECISIONS, apply_precision
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.seeding import ImageNoise
from guided_diffusion.sampling.steps import sample_loop, sampler_for

MODEL_FLAGS = FlagGroup.from_defaults("model and diffusion (the ADM release's flags)", model_and_diffusion_defaults(),
                                      RELEASE_FLAG_HELP)
CLASSIFIER_FLAGS = FlagGroup("classifier (the ADM release's flags)", [
    Flag("classifier_path", "", "noisy-image classifier checkpoint: enables classifier guidance (--classifier_scale)"),
    *FlagGroup.from_defaults("", {k: v for k, v in classifier_defaults().items() if k != "image_size"},
                             RELEASE_FLAG_HELP).flags,
])


def precision(args):
    """The model's precision from --precision and the release's --use_fp16, which must not disagree."""
    if args.precision and args.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.use_fp16 and args.precision not in ("", "fp16"):
        raise ValueError(f"--use_fp16 True converts the model to fp16: drop it to use --precision {args.precision}")
    return args.precision or ("fp16" if args.use_fp16 else "fp32")


def _eta_problem(flag, value, args):
    return f"{flag} is a DDIM setting: add --use_ddim True" if value and not args.use_ddim else None


def _ddim_spacing_warning(flag, value, args):
    """DDPM on DDIM's step spacing is a valid respaced DDPM (another set of steps than --timestep_respacing N),
    so it runs; but it is mostly a DDIM config that lacks --use_ddim True."""
    spacing = str(getattr(args, "timestep_respacing", "") or "")
    if value or not spacing.startswith("ddim"):
        return None
    return (f"--timestep_respacing {spacing} with {flag} False samples with DDPM steps on DDIM's step spacing: "
            f"set {flag} True for DDIM, or --timestep_respacing {spacing[len('ddim'):]} for DDPM's even spacing")


# Flags that several scripts declare alike (each may give its own help with `Flag.but`).
MODEL_PATH = Flag("model_path", "", "diffusion model checkpoint (e.g. models/256x256_diffusion_uncond.pt)", required)
BATCH_SIZE = Flag("batch_size", 16, "images per forward pass and per shard (does not change the samples)",
                  at_least(1))
USE_DDIM = Flag("use_ddim", False, "DDIM steps instead of ancestral DDPM steps (use with --timestep_respacing ddimN)",
                warn=_ddim_spacing_warning)
ETA = Flag("eta", 0.0, "DDIM eta (0 = deterministic DDIM)", _eta_problem)
CLIP_DENOISED = Flag("clip_denoised", True, "clip the x0 prediction to [-1, 1]")
PRECISION = Flag("precision", "", f"one of {', '.join(PRECISIONS)}; empty: fp16 with --use_fp16 True (the "
                                  "release's conversion), else fp32",
                 raising(lambda flag, value, args: precision(args)))


def load_model(flags, device="cpu", model_path=None):
    """The one model loader: the diffusion model of the model flags with the weights of `model_path` (default:
    the flags' model_path) at the flags' precision, in eval mode on `device`, and its diffusion.

    `flags`: parsed flags, or a dict of flag values as a YAML config gives them (model flags it lacks take
    their defaults, other keys are ignored)."""
    values = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    settings = argparse.Namespace(**{**MODEL_FLAGS.defaults(), "precision": "", **values})
    model, diffusion = create_model_and_diffusion(**MODEL_FLAGS.values(settings))
    load_checkpoint(model, str(model_path or settings.model_path))
    return apply_precision(model, precision(settings)).to(device).eval(), diffusion


def weak_model_settings(args):
    """Autoguidance's weak model flags: the main model's (with --precision) except those --auto_model_config sets."""
    if not args.auto_model_path:
        raise ValueError("--auto_scale needs --auto_model_path: the weak model's checkpoint")
    return weak_model_flags({**MODEL_FLAGS.values(args), "precision": args.precision}, args.auto_model_config)


def load_weak_model(args, device):
    """Autoguidance's weak model from --auto_model_path (see `weak_model_settings`)."""
    return load_model(weak_model_settings(args), device, args.auto_model_path)[0]


def load_classifier(args, device):
    """The noisy-image classifier of the classifier flags with --classifier_path's weights."""
    classifier = create_classifier(image_size=args.image_size, num_classes=args.num_classes,
                                   **CLASSIFIER_FLAGS.values(args, exclude=("classifier_path",)))
    load_checkpoint(classifier, args.classifier_path)
    if args.classifier_use_fp16:
        classifier.convert_to_fp16()
    return classifier.to(device).eval()


class LabelBlind(torch.nn.Module):
    """An unconditional model that ignores the labels the classifier guidance needs in model_kwargs."""

    def __init__(self, module):
        super().__init__()
        self.module = module  # `guidance.unwrap` finds the U-Net (and its attention blocks) here

    def forward(self, x, timesteps, y=None, **kwargs):
        return self.module(x, timesteps, **kwargs)


def sample_images(model, diffusion, indices, *, seed, image_size, labels=None, use_ddim=False, eta=0.0,
                  clip_denoised=True, guidance=None, device="cpu"):
    """Samples in [-1, 1] ([n, 3, H, W]) for image `indices`, each from its own (seed, index) noise streams.

    `labels`: the images' class labels (numpy, passed to the model as `y`) or None.
    """
    device = torch.device(device)
    noise = ImageNoise(seed, indices, (3, image_size, image_size), device=device)
    rows = len(indices)
    fit = batch_invariant_fit(rows, device)  # the padding row is dropped below
    model_kwargs = {} if labels is None else {"y": fit(torch.from_numpy(np.ascontiguousarray(labels)).to(device))}
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised)
    x0 = sample_loop(denoiser, sampler_for(use_ddim, eta), fit(noise.initial()),
                     step_noise_fn=lambda i: fit(noise.step(i)))
    return x0[:rows]


def sample_uint8(model, diffusion, indices, batch_size, *, labels=None, **options):
    """uint8 NHWC images (numpy) of image `indices`, sampled `batch_size` at a time by `sample_images` with
    `options`; `labels`: one class label per index (numpy), or None. The batch size does not change them."""
    parts = []
    for start in range(0, len(indices), batch_size):
        rows = slice(start, start + batch_size)
        parts.append(to_uint8(sample_images(model, diffusion, indices[rows], **options,
                                            labels=None if labels is None else labels[rows])).numpy())
    return np.concatenate(parts)


def batches(indices, batch_size):
    """`indices` in consecutive batches of `batch_size` (the last one may be smaller)."""
    return [indices[k:k + batch_size] for k in range(0, len(indices), batch_size)]


def batch_invariant_fit(rows, device):
    """`fit(t)` for the per-row tensors of a batch of `rows` images on `device`: `t` itself, except that on
    CPU a batch of one gets a copy of its row.

    On CPU a batch of exactly one row runs other conv kernels than any batch of 2 or more and differs in
    the last bits; the copy keeps the image identical to a larger batch's. Callers keep the first `rows`
    rows of the result.
    """
    if rows == 1 and torch.device(device).type == "cpu":
        return lambda t: torch.cat([t, t])
    return lambda t: t

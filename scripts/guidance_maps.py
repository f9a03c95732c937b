"""Draw what guidance does at chosen steps (in the spirit of the PAG paper's Fig. 3).

For each chosen step, one row: the x0 predicted by the normal pass, by the perturbed pass (PAG's identity
attention or SAG's blurred input), by the guided combination, and the size of the guidance signal
|eps~ - eps|. Example on the shipped demo model:

    python -m scripts.guidance_maps --config configs/digits/model.yaml \\
        --model_path checkpoints/digits_adm16_ema.pt --pag_scale 3 --pag_layers middle_block.1 \\
        --timestep_respacing ddim25 --use_ddim True --out guidance.png

It takes pag-image-sample's flags and config files (e.g. configs/fashion32/table1/uncond_pag.yaml): the flags
that only a sampling run uses (--num_samples, --batch_size, --output_dir, ...) are accepted and named in a
note as not used; classifier guidance (or any guidance by a second network) is not drawn, with a warning.
"""

import logging

import torch

from guided_diffusion.cli.flags import Flag, FlagGroup, check_flags, create_parser, parse
from guided_diffusion.data.image_io import save_image_grid, to_uint8
from guided_diffusion.guidance import guidance_flags, guidance_from_flags, network_free_methods, registered_methods
from guided_diffusion.runtime import distributed as dist_util
from guided_diffusion.runtime.logs import log_to_console
from guided_diffusion.sampling.images import (
    CLASSIFIER_FLAGS,
    CLIP_DENOISED,
    ETA,
    MODEL_FLAGS,
    MODEL_PATH,
    PRECISION,
    USE_DDIM,
    load_model,
)
from guided_diffusion.sampling.pictures import guidance_snapshots, save_guidance_figure
from guided_diffusion.sampling.run import FLAG_GROUPS as SAMPLER_FLAG_GROUPS
from guided_diffusion.sampling.seeding import ImageNoise

log = logging.getLogger("scripts.guidance_maps")

FIGURE_FLAGS = FlagGroup("figure", [
    MODEL_PATH.but(help="diffusion checkpoint"),
    Flag("seed", 0, "image i's noise comes from (seed, i), as in image_sample.py"),
    Flag("image_index", 0, "which of the sampled images the figure shows"),
    Flag("num_images", 4, "images sampled (a grid of all of them is written next to the figure)"),
    Flag("steps", "0.9,0.6,0.3,0.0", "comma-separated positions in the sampling run, 1.0 = first step (pure "
                                     "noise), 0.0 = last"),
    USE_DDIM.but(default=True, help="DDIM steps (else DDPM)"),
    ETA.but(help="DDIM eta"),
    CLIP_DENOISED,
    PRECISION,
    Flag("out", "guidance.png", "PNG to write"),
    Flag("class_label", -1, "class label for conditional models (-1: image index mod --num_classes)"),
])


USED_GROUPS = (FIGURE_FLAGS, guidance_flags(network_free_methods()), MODEL_FLAGS)
# pag-image-sample's other flags, so that its config files and command lines work here too
SAMPLER_ONLY = FlagGroup.not_used("pag-image-sample flags that the figure does not use", SAMPLER_FLAG_GROUPS,
                                  USED_GROUPS)
# the flags of methods that need another network (a classifier, ...), which the figure leaves out
NOT_DRAWN = {*CLASSIFIER_FLAGS.names, *guidance_flags([m for m in registered_methods() if m.needs_network]).names}
FLAG_GROUPS = (*USED_GROUPS, SAMPLER_ONLY)


def create_argparser():
    return create_parser(__doc__, FLAG_GROUPS)


def step_indices(fractions, num_steps):
    """Step indices (counting down from num_steps - 1) at the given positions of the run."""
    indices = []
    for text in str(fractions).split(","):
        fraction = float(text)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"--steps positions must lie in [0, 1], got {fraction}")
        indices.append(round(fraction * (num_steps - 1)))
    return sorted(set(indices), reverse=True)


def main(argv=None):
    """Console entry point: exit status 0, or SystemExit with the problem (status 1)."""
    args = parse(create_argparser(), argv)
    log_to_console()
    try:
        draw(args)
    except (ValueError, OSError) as error:  # bad flags, unknown layers, unreadable checkpoints
        raise SystemExit(f"error: {error}") from None
    return 0


def note_flags_not_used(args):
    """One line for the sampler's flags that were set and are not used here (a config file of a sampling run);
    a warning where they ask for guidance by another network (a classifier), which the figure leaves out."""
    names = SAMPLER_ONLY.changed(args)
    skipped = [f"--{name}" for name in names if name in NOT_DRAWN]
    others = [f"--{name}" for name in names if name not in NOT_DRAWN]
    if skipped:
        log.warning("classifier guidance (and any guidance by a second network) is not drawn: %s not used",
                    ", ".join(skipped))
    if others:
        log.info("not used by the figure (flags of a sampling run): %s", ", ".join(others))


def draw(args):
    """Sample, draw the figure and the grid of samples; returns the figure's path."""
    check_flags(args, FLAG_GROUPS)
    note_flags_not_used(args)
    guidance = guidance_from_flags(args)
    if not guidance:
        raise SystemExit("nothing to draw: set --pag_scale and/or --sag_scale")
    device = dist_util.dev()
    model, diffusion = load_model(args, device)
    indices = list(range(args.num_images))
    noise = ImageNoise(args.seed, indices, (3, args.image_size, args.image_size), device=device)
    model_kwargs = {}
    if args.class_cond:
        labels = [args.class_label if args.class_label >= 0 else i % args.num_classes for i in indices]
        model_kwargs["y"] = torch.tensor(labels, device=device)
    steps = step_indices(args.steps, diffusion.num_timesteps)
    final, snapshots = guidance_snapshots(diffusion, model, noise.initial(), guidance, steps,
                                          model_kwargs=model_kwargs, use_ddim=args.use_ddim, eta=args.eta,
                                          clip_denoised=args.clip_denoised, step_noise_fn=noise.step)
    save_guidance_figure(snapshots, args.out, image_index=args.image_index)
    grid = args.out.rsplit(".", 1)[0] + "_samples.png"
    save_image_grid(to_uint8(final), grid)
    log.info("wrote %s and %s", args.out, grid)
    return args.out


if __name__ == "__main__":
    raise SystemExit(main())

"""Command-line flags for PAG, SAG and classifier guidance, and the guidance objects they describe.

Scales are the PAG paper's `s` (eps~ = eps + s * (eps - eps_perturbed)); the official PAG/SAG scripts'
`--guide_scale g` is s = g - 1. A scale of 0 turns a guidance off; negative scales are allowed (they guide
towards the perturbed prediction), NaN and infinity are refused before any model is loaded (the scale
flags' check). Intervals are `lo,hi` in base-process timesteps (0 .. diffusion_steps - 1), so they mean
the same for any respacing.
"""

import dataclasses

from . import guidance as guidance_lib
from .flags import Flag, FlagGroup, finite
from .guidance import ClassifierGuidance, PerturbedAttentionGuidance, SelfAttentionGuidance
from .scales import check_scale

_SAG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SelfAttentionGuidance)}
_SCHEDULES = "/".join(guidance_lib.SCHEDULES)

GUIDANCE_FLAGS = FlagGroup("guidance (scales are the PAG paper's s = official g - 1)", [
    Flag("pag_scale", 0.0, "PAG scale s (0 = off; negative values guide the other way; the official scripts' "
                           "--guide_scale g is s = g - 1)", finite),
    Flag("pag_layers", list(guidance_lib.OFFICIAL_PAG_LAYERS_256),
         "attention blocks whose map PAG replaces by the identity (space or comma separated); "
         "default: the official ADM ImageNet-256 set"),
    Flag("pag_interval", "", "apply PAG only at base timesteps lo<=t<=hi, given as 'lo,hi' (default: every step)"),
    Flag("pag_schedule", "constant", f"PAG scale schedule over the process: {_SCHEDULES}"),
    Flag("sag_scale", 0.0, "SAG scale s (0 = off; negative values guide the other way; the official SAG scripts' "
                           "--guide_scale g is s = g - 1)", finite),
    Flag("sag_blur_sigma", float(_SAG_DEFAULTS["blur_sigma"]), "SAG Gaussian blur sigma"),
    Flag("sag_layer", _SAG_DEFAULTS["layer"], "attention block whose map SAG uses (official 'output, depth d' is "
                                              "output_blocks.d.1; 'middle' is middle_block.1)"),
    Flag("sag_map_heads", _SAG_DEFAULTS["map_heads"], "'official': the map as the official SAG code computes it; "
                                                      "'block': the block's own heads"),
    Flag("sag_interval", "", "apply SAG only at base timesteps lo<=t<=hi, given as 'lo,hi' (default: every step)"),
    Flag("sag_schedule", "constant", f"SAG scale schedule: {_SCHEDULES}"),
    Flag("classifier_scale", 1.0, "classifier guidance scale (used only with --classifier_path, as in the release; "
                                  "negative values push away from the class)", finite),
    Flag("classifier_interval", "", "apply classifier guidance only at base timesteps lo<=t<=hi ('lo,hi')"),
    Flag("classifier_schedule", "constant", f"classifier guidance scale schedule: {_SCHEDULES}"),
])
# PAG and SAG only, for scripts without a classifier
ATTENTION_GUIDANCE_FLAGS = GUIDANCE_FLAGS.only([n for n in GUIDANCE_FLAGS.names if n.startswith(("pag_", "sag_"))])


def parse_interval(text, flag):
    """`'lo,hi'` -> (lo, hi); empty -> None (every step)."""
    if not text or not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--{flag} must be 'lo,hi' in base timesteps (e.g. '0,999'), got {text!r}") from None
    return lo, hi


def parse_layers(items):
    """Layer names from flag values that may hold several names separated by commas."""
    return [name for item in items for name in str(item).replace(",", " ").split()]


def attention_guidance(args):
    """The PAG / SAG objects the flags ask for (no model needed; raises ValueError for bad values)."""
    check_scale(args.pag_scale, "--pag_scale")
    check_scale(args.sag_scale, "--sag_scale")
    items = []
    if args.pag_scale:
        items.append(PerturbedAttentionGuidance(
            scale=args.pag_scale, layers=parse_layers(args.pag_layers),
            interval=parse_interval(args.pag_interval, "pag_interval"), schedule=args.pag_schedule))
    if args.sag_scale:
        items.append(SelfAttentionGuidance(
            scale=args.sag_scale, blur_sigma=args.sag_blur_sigma, layer=args.sag_layer, map_heads=args.sag_map_heads,
            interval=parse_interval(args.sag_interval, "sag_interval"), schedule=args.sag_schedule))
    return items


def classifier_guidance(args, classifier):
    return ClassifierGuidance(classifier, check_scale(args.classifier_scale, "--classifier_scale"),
                              interval=parse_interval(args.classifier_interval, "classifier_interval"),
                              schedule=args.classifier_schedule)


def describe(items):
    """The settings of PAG / SAG objects as a flat dict keyed like the flags (`pag_scale`, `sag_layer`, ...).

    Only guidances that are on appear, so flags of a guidance that is off change nothing.
    """
    prefixes = {PerturbedAttentionGuidance: "pag", SelfAttentionGuidance: "sag"}
    out = {}
    for item in items:
        for name, value in dataclasses.asdict(item).items():
            out[f"{prefixes[type(item)]}_{name}"] = list(value) if isinstance(value, tuple) else value
    return out

"""Pictures of what guidance does, in the spirit of the PAG paper's Fig. 3.

For chosen sampling steps: the x0 predicted by the normal pass, by the perturbed pass, by the guided
combination, and the size of the guidance signal |eps~ - eps| (mean over channels), side by side, with a
colour bar giving the range of each row's |guidance| panel (drawn with PIL; no plotting library needed).
"""

import json

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from guided_diffusion.data.image_io import to_uint8
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.steps import sample_loop, sampler_for

COLUMNS = ("normal x0", "perturbed x0", "guided x0", "|guidance|")


def guidance_snapshots(diffusion, model, noise, guidance, steps, model_kwargs=None, use_ddim=True, eta=0.0,
                       step_noise_fn=None):
    """Sample from `noise` with `guidance`; at the step indices in `steps` record the four panels.

    The panels come from the sampling step's own guided prediction (the loop's callback), so recording
    changes nothing. Returns (final sample, [{"step", "t", "normal", "perturbed", "guided", "signal"}, ...])
    with images in [-1, 1] ([B, 3, H, W]) and the signal as [B, H, W].
    """
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs)
    wanted = set(int(s) for s in steps)
    snapshots = []

    def record(step):
        if step["i"] not in wanted:
            return
        parts, x, t = step["prediction"], step["x"], step["t"]
        perturbed = parts["perturbed_eps"][0] if parts["perturbed_eps"] else parts["eps"]

        def x0(mean_output):
            return diffusion.xstart_from_output(x, t, mean_output).clamp(-1, 1)

        snapshots.append({
            "step": step["i"], "t": int(diffusion.base_timesteps(t)[0]),
            "normal": x0(parts["eps"]), "perturbed": x0(perturbed), "guided": x0(parts["guided_eps"]),
            "signal": (parts["guided_eps"] - parts["eps"]).abs().mean(dim=1),
        })

    final = sample_loop(denoiser, sampler_for(use_ddim, eta), noise, step_noise_fn=step_noise_fn, callback=record)
    return final, snapshots


# The colour bar right of each |guidance| panel: a gap, the bar, and room for its labels (PIL's default font).
BAR_GAP, BAR_WIDTH, BAR_LABELS = 4, 10, 48
COLOUR_BAR = BAR_GAP + BAR_WIDTH + BAR_LABELS


def _colours(v):
    """RGB uint8 for values in [0, 1]: black -> red -> yellow."""
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _heat(signal):
    """Map a non-negative [H, W] array to RGB, scaled to its own maximum (which the colour bar labels)."""
    return _colours(signal / max(float(signal.max()), 1e-12))


def _colour_bar(draw, canvas, left, top, height, peak):
    """The colour scale of one |guidance| panel: 0 at the bottom, `peak` at the top, both labelled."""
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(_colours(ramp)), (left, top))
    draw.rectangle([left - 1, top - 1, left + BAR_WIDTH, top + height], outline="black")
    draw.text((left + BAR_WIDTH + 3, top), f"{peak:.2g}", fill="black")
    draw.text((left + BAR_WIDTH + 3, top + height - 11), "0", fill="black")


def save_guidance_figure(snapshots, path, image_index=0, tile=96):
    """Write one PNG: a row per recorded step, the four panels of COLUMNS for image `image_index`, and a colour
    bar with the range of each |guidance| panel (also stored as PNG text `guidance_range`, JSON)."""
    if not snapshots:
        raise ValueError("no snapshots to draw: pass step indices within the sampler's steps")
    header, label = 18, 70
    width, height = label + tile * len(COLUMNS) + COLOUR_BAR, header + tile * len(snapshots)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(COLUMNS):
        draw.text((label + c * tile + 4, 3), name, fill="black")
    ranges = []
    for r, snap in enumerate(snapshots):
        top = header + r * tile
        draw.text((4, top + tile // 2 - 6), f"t = {snap['t']}", fill="black")
        panels = [to_uint8(snap[k][image_index:image_index + 1])[0].cpu().numpy()
                  for k in ("normal", "perturbed", "guided")]
        signal = snap["signal"][image_index].float().cpu().numpy()
        panels.append(_heat(signal))
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel).resize((tile, tile), Image.NEAREST), (label + c * tile, top))
        peak = float(signal.max())
        _colour_bar(draw, canvas, label + tile * len(COLUMNS) + BAR_GAP, top + 2, tile - 4, peak)
        ranges.append({"t": snap["t"], "min": 0.0, "max": peak})
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("guidance_range", json.dumps(ranges))
    canvas.save(path, pnginfo=metadata)
    return path

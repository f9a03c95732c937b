"""Pictures of what guidance does, in the spirit of the PAG paper's Fig. 3.

For chosen sampling steps: the x0 predicted by the normal pass, by the perturbed pass, by the guided
combination, and the size of the guidance signal |eps~ - eps| (mean over channels), side by side.
"""

import numpy as np
from PIL import Image, ImageDraw

from .denoiser import GuidedDenoiser
from .image_io import to_uint8
from .samplers import sample_loop, sampler_for

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


def _heat(signal):
    """Map a non-negative [H, W] array to RGB (black -> red -> yellow), scaled to its own maximum."""
    v = signal / max(float(signal.max()), 1e-12)
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def save_guidance_figure(snapshots, path, image_index=0, tile=96):
    """Write one PNG: a row per recorded step, the four panels of COLUMNS for image `image_index`."""
    if not snapshots:
        raise ValueError("no snapshots to draw: pass step indices within the sampler's steps")
    header, label = 18, 70
    width, height = label + tile * len(COLUMNS), header + tile * len(snapshots)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(COLUMNS):
        draw.text((label + c * tile + 4, 3), name, fill="black")
    for r, snap in enumerate(snapshots):
        top = header + r * tile
        draw.text((4, top + tile // 2 - 6), f"t = {snap['t']}", fill="black")
        panels = [to_uint8(snap[k][image_index:image_index + 1])[0].cpu().numpy() for k in ("normal", "perturbed", "guided")]
        panels.append(_heat(snap["signal"][image_index].cpu().numpy()))
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel).resize((tile, tile), Image.NEAREST), (label + c * tile, top))
    canvas.save(path)
    return path

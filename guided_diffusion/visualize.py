"""Pictures of what guidance does, in the spirit of the PAG paper's Fig. 3.

For chosen sampling steps: the x0 predicted by the normal pass, by the perturbed pass, by the guided
combination, and the size of the guidance signal |eps~ - eps| (mean over channels), side by side.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import guidance as guidance_lib
from .gaussian_diffusion import ModelMeanType
from .image_io import to_uint8

COLUMNS = ("normal x0", "perturbed x0", "guided x0", "|guidance|")


def _x0(diffusion, x, t, mean_output):
    if diffusion.model_mean_type == ModelMeanType.START_X:
        return mean_output.clamp(-1, 1)
    return diffusion._predict_xstart_from_eps(x, t, mean_output).clamp(-1, 1)


def guidance_snapshots(diffusion, model, noise, guidance, steps, model_kwargs=None, use_ddim=True, eta=0.0,
                       step_noise_fn=None):
    """Sample from `noise` with `guidance`; at the step indices in `steps` record the four panels.

    Returns (final sample, [{"step", "t", "normal", "perturbed", "guided", "signal"}, ...]) with images in
    [-1, 1] ([B, 3, H, W]) and the signal as [B, H, W].
    """
    model_kwargs = model_kwargs or {}
    guidance_lib.validate(guidance, model)
    wanted = set(int(s) for s in steps)
    x = noise
    snapshots = []
    step_fn = diffusion.ddim_sample if use_ddim else diffusion.p_sample
    extra = {"eta": eta} if use_ddim else {}
    adds_noise = step_noise_fn is not None and not (use_ddim and eta == 0)
    with torch.no_grad():
        for i in reversed(range(diffusion.num_timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            details = {} if i in wanted else None  # the step itself records its guided prediction's parts
            step_noise = step_noise_fn(i) if adds_noise and i > 0 else None
            out = step_fn(model, x, t, model_kwargs=model_kwargs, guidance=guidance, step_noise=step_noise,
                          details=details, **extra)
            if details is not None:
                perturbed = details["perturbed_eps"][0] if details["perturbed_eps"] else details["eps"]
                snapshots.append({
                    "step": i, "t": int(diffusion.timestep_map[i]),
                    "normal": _x0(diffusion, x, t, details["eps"]),
                    "perturbed": _x0(diffusion, x, t, perturbed),
                    "guided": _x0(diffusion, x, t, details["guided_eps"]),
                    "signal": (details["guided_eps"] - details["eps"]).abs().mean(dim=1),
                })
            x = out["sample"]
    return x, snapshots


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

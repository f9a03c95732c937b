"""Pictures of what guidance does, in the spirit of the PAG paper's Fig. 3.

For chosen sampling steps: the x0 predicted by the normal pass, by the perturbed pass, by the guided
combination, and the size of the guidance signal |eps~ - eps| (mean over channels), side by side, with one
colour bar for the |guidance| panels of all rows (drawn with PIL; no plotting library needed).
"""

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from guided_diffusion.data.image_io import to_uint8
from guided_diffusion.sampling.denoiser import GuidedDenoiser
from guided_diffusion.sampling.steps import sample_loop, sampler_for

COLUMNS = ("normal x0", "perturbed x0", "guided x0", "|guidance|")


def guidance_snapshots(diffusion, model, noise, guidance, steps, model_kwargs=None, use_ddim=True, eta=0.0,
                       step_noise_fn=None, clip_denoised=True):
    """Sample from `noise` with `guidance`; at the step indices in `steps` record the four panels.

    The panels come from the sampling step's own guided prediction (the loop's callback), so recording
    changes nothing. Returns (final sample, [{"step", "t", "normal", "perturbed", "guided", "signal"}, ...])
    with images in [-1, 1] ([B, 3, H, W]) and the signal as [B, H, W].
    """
    denoiser = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised)
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


# Right of the panels, one colour bar for every |guidance| panel: a gap, the bar, and room for its labels.
BAR_GAP, BAR_WIDTH, BAR_LABELS = 4, 10, 48
COLOUR_BAR = BAR_GAP + BAR_WIDTH + BAR_LABELS
BAR_CAPTION = "all rows"  # the bar is the one scale of every row's |guidance| panel
LABEL_WIDTH = 70  # the row labels (t = ...) left of the panels
# Header text: lines LINE pixels apart, MARGIN above and below, at least PAD pixels from a column's edges.
LINE, MARGIN, PAD = 12, 3, 1


@dataclass(frozen=True)
class FigureLayout:
    """Where `save_guidance_figure` draws: `column` is the side of a panel, `header` the height of the titles,
    and `titles` every line of header text as (text, (x, y) drawn at, (x0, y0, x1, y1) box the renderer
    measures), the column titles first, then the colour bar's caption."""

    column: int
    header: int
    rows: int
    titles: tuple

    @property
    def bar_left(self):
        return LABEL_WIDTH + self.column * len(COLUMNS) + BAR_GAP

    @property
    def size(self):
        return LABEL_WIDTH + self.column * len(COLUMNS) + COLOUR_BAR, self.header + self.column * self.rows


def _wrapped(text, width, measure):
    """`text` in lines no wider than `width` pixels, broken between words (a wider word gets a line of its own)."""
    lines = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def figure_layout(tile, rows):
    """The layout of a figure of `rows` steps with panels of `tile` pixels, made wider where needed so that
    every word of a title fits its column: titles wrap between words, so no two of them overlap."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text):
        left, _, right, _ = draw.textbbox((0, 0), text)
        return right - left

    words = [word for title in COLUMNS for word in title.split()]
    column = max(int(tile), max(measure(word) for word in words) + 2 * PAD, 2 * LINE + 8)  # 8: the bar's labels
    blocks = [(LABEL_WIDTH + c * column, column, _wrapped(title, column - 2 * PAD, measure))
              for c, title in enumerate(COLUMNS)]
    bar_left = LABEL_WIDTH + column * len(COLUMNS) + BAR_GAP
    blocks.append((bar_left, COLOUR_BAR - BAR_GAP, _wrapped(BAR_CAPTION, COLOUR_BAR - BAR_GAP - PAD, measure)))
    titles = []
    for left, width, lines in blocks:
        for k, line in enumerate(lines):
            x, y = left + max(PAD, (width - measure(line)) // 2), MARGIN + k * LINE
            titles.append((line, (x, y), draw.textbbox((x, y), line)))
    header = 2 * MARGIN + LINE * max(len(lines) for _, _, lines in blocks)
    return FigureLayout(column, header, rows, tuple(titles))


def _colours(v):
    """RGB uint8 for values in [0, 1]: black -> red -> yellow."""
    rgb = np.stack([np.clip(2 * v, 0, 1), np.clip(2 * v - 1, 0, 1), np.zeros_like(v)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _colour_bar(draw, canvas, left, top, height, peak):
    """The one colour scale of the |guidance| panels: 0 at the bottom, `peak` at the top, both labelled."""
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(_colours(ramp)), (left, top))
    draw.rectangle([left - 1, top - 1, left + BAR_WIDTH, top + height], outline="black")
    draw.text((left + BAR_WIDTH + 3, top), f"{peak:.2g}", fill="black")
    draw.text((left + BAR_WIDTH + 3, top + height - 11), "0", fill="black")


def save_guidance_figure(snapshots, path, image_index=0, tile=96):
    """Write one PNG: a row per recorded step with the four panels of COLUMNS for image `image_index`, and one
    colour bar for every row's |guidance| panel, from 0 to the largest |guidance| of the figure, so that rows
    compare (the range and each row's own peak are also stored as PNG text `guidance_range`, JSON).

    `tile`: the side of a panel in pixels, made larger where a title would not fit (see `figure_layout`)."""
    if not snapshots:
        raise ValueError("no snapshots to draw: pass step indices within the sampler's steps")
    layout = figure_layout(tile, len(snapshots))
    column = layout.column
    canvas = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(canvas)
    for text, position, _ in layout.titles:
        draw.text(position, text, fill="black")
    signals = [snap["signal"][image_index].float().cpu().numpy() for snap in snapshots]
    peaks = [float(signal.max()) for signal in signals]
    vmax = max(max(peaks), 1e-12)
    for r, (snap, signal) in enumerate(zip(snapshots, signals)):
        top = layout.header + r * column
        draw.text((4, top + column // 2 - 6), f"t = {snap['t']}", fill="black")
        panels = [to_uint8(snap[k][image_index:image_index + 1])[0].cpu().numpy()
                  for k in ("normal", "perturbed", "guided")]
        panels.append(_colours(signal / vmax))
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(panel).resize((column, column), Image.NEAREST),
                         (LABEL_WIDTH + c * column, top))
    _colour_bar(draw, canvas, layout.bar_left, layout.header + 2, column * len(snapshots) - 4, max(peaks))
    ranges = [{"t": snap["t"], "min": 0.0, "max": max(peaks), "peak": peak} for snap, peak in zip(snapshots, peaks)]
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("guidance_range", json.dumps(ranges))
    canvas.save(path, pnginfo=metadata)
    return path

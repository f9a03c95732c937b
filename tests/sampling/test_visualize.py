"""The Fig. 3-style guidance picture."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.guidance import PerturbedAttentionGuidance
from guided_diffusion.sampling.pictures import (
    BAR_GAP,
    BAR_WIDTH,
    COLOUR_BAR,
    COLUMNS,
    figure_layout,
    guidance_snapshots,
    save_guidance_figure,
)

from conftest import assert_close
from golden import build_model_and_diffusion, load_fixture


@pytest.mark.golden
@pytest.mark.slow
def test_snapshots_follow_the_guided_sampler_and_figure_is_written(tmp_path):
    fx = load_fixture("pag_adm32.pt")
    case = next(c for c in fx["cases"] if c["name"] == "ddim_g4_deep_input_and_middle")
    model, diffusion = build_model_and_diffusion(fx, timestep_respacing="ddim10")
    guidance = PerturbedAttentionGuidance(scale=case["guidance"]["scale"], layers=case["guidance"]["layers"])
    final, snaps = guidance_snapshots(diffusion, model, fx["inputs"]["ddim.noise"], guidance, steps=[9, 5, 0])
    # Recording must not change the sample: it equals the official-code fixture for the same loop.
    assert_close(final, fx["expected"]["ddim_g4_deep_input_and_middle.sample"], 1e-3, "sample while recording")
    assert [s["step"] for s in snaps] == [9, 5, 0] and [s["t"] for s in snaps] == [900, 500, 0]
    for snap in snaps:
        assert snap["signal"].shape == (2, 32, 32) and bool((snap["signal"] > 0).any())
        # guided = normal + s * (normal - perturbed) before clipping, so it moves away from the perturbed x0.
        assert (snap["guided"] - snap["perturbed"]).abs().mean() >= (snap["normal"] - snap["perturbed"]).abs().mean()
    path = save_guidance_figure(snaps, tmp_path / "fig.png", tile=40)
    image = np.asarray(Image.open(path))
    layout = figure_layout(40, 3)
    assert image.shape[1::-1] == layout.size and layout.column >= 40
    assert image[layout.header:, 70:70 + layout.column * len(COLUMNS)].std() > 10  # real pictures, not a blank canvas


def snapshots(peaks, size=8):
    """One recorded step per peak: random x0 panels and a |guidance| ramp from 0 to the peak."""
    generator = torch.Generator().manual_seed(0)
    return [{"step": i, "t": 10 * i, **{k: torch.rand(1, 3, size, size, generator=generator) * 2 - 1
                                       for k in ("normal", "perturbed", "guided")},
             "signal": torch.linspace(0, peak, size * size).reshape(1, size, size)} for i, peak in enumerate(peaks)]


def geometry(image, rows):
    """(column width, header height) of a drawn figure: the row labels take 70 pixels, the colour bar
    COLOUR_BAR, the rest is len(COLUMNS) square columns of `rows` rows under the header."""
    height, width = image.shape[:2]
    column = (width - 70 - COLOUR_BAR) // len(COLUMNS)
    return column, height - rows * column


def test_rows_share_one_colour_scale_with_one_labelled_bar(tmp_path):
    peaks = [0.5, 0.02, 0.1]
    figure = Image.open(save_guidance_figure(snapshots(peaks), tmp_path / "fig.png", tile=64))
    # every row is drawn on one scale: vmin 0 and vmax the figure's largest |guidance|
    ranges = json.loads(figure.text["guidance_range"])
    assert [r["t"] for r in ranges] == [0, 10, 20]
    assert [r["min"] for r in ranges] == [0.0] * 3 and [r["max"] for r in ranges] == pytest.approx([0.5] * 3)
    assert [r["peak"] for r in ranges] == pytest.approx(peaks)
    image = np.asarray(figure.convert("RGB")).astype(int)
    column, header = geometry(image, len(peaks))
    for row, peak in enumerate(peaks):
        panel = image[header + column * row:header + column * (row + 1), 70 + column * 3:70 + column * 4]
        # black -> red -> yellow: red + green grows linearly with the value on the shared scale
        assert (panel[..., 0] + panel[..., 1]).max() / 510 == pytest.approx(peak / max(peaks), abs=0.01), row
    # one bar from the first row's top to the last row's bottom: yellow (the maximum) down to black (0)
    bar_left = 70 + column * len(COLUMNS) + BAR_GAP
    bar = image[header + 2:image.shape[0] - 2, bar_left + BAR_WIDTH // 2]
    assert tuple(bar[0]) == (255, 255, 0) and tuple(bar[-1]) == (0, 0, 0)
    brightness = bar.sum(axis=1)
    assert (np.diff(brightness) <= 0).all() and brightness[0] > brightness[-1]
    labels = image[header:, bar_left + BAR_WIDTH + 2:]
    assert (labels[:14] < 128).any() and (labels[-14:] < 128).any()  # its range: text at the top and the bottom
    assert (image[:header, bar_left:] < 128).any()  # and a caption saying what it measures
    assert not (labels[column - 14:column + 14] < 128).any()  # no other labels between the rows


@pytest.mark.parametrize("tile", [16, 40, 64, 96])
def test_column_titles_stay_within_their_columns(tmp_path, tile):
    image = np.asarray(Image.open(save_guidance_figure(snapshots([0.5, 0.2]), tmp_path / "fig.png", tile=tile))
                       .convert("L"))
    column, header = geometry(image, 2)
    assert column >= tile
    ink = image[:header] < 160
    edges = [70 + column * c for c in range(len(COLUMNS) + 1)]
    for c, (left, right) in enumerate(zip(edges, edges[1:])):
        assert not ink[:, left].any(), f"a title crosses the left edge of column {c} ({COLUMNS[c]!r})"
        assert ink[:, left + 1:right].any(), f"column {c} has no title"
    assert not ink[:, edges[-1]].any(), "the last title runs into the colour bar"
    # the renderer's own extents of every header line: inside the header, inside its column, and apart
    layout = figure_layout(tile, 2)
    assert (layout.column, layout.header) == (column, header)
    boxes = [box for _, _, box in layout.titles]
    assert len(boxes) >= len(COLUMNS) + 1  # the titles and the colour bar's caption
    for (x0, y0, x1, y1) in boxes:
        assert 0 <= y0 and y1 <= header and 0 <= x0 and x1 <= image.shape[1]
        assert sum(left <= x0 and x1 < right for left, right in zip(edges, edges[1:] + [image.shape[1]])) == 1
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"title boxes {a} and {b} overlap"

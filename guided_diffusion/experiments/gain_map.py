"""A guidance method's gain as a map over checkpoints, samplers and scales, read from a paired sweep.

The sweep (a spec with `pair_by: [model_path, config]` and `baseline: {pag_scale: 0.0}`, as
configs/sweeps/fashion32/pag_gain_map.yaml) compares every guided point with the unguided point of the same
checkpoint and sampler on the same seeds. A map row is one such comparison: the sampler, the checkpoint's
training step, the scale, the unguided FID, the guided FID and the paired difference with their intervals.
The table lists the rows; the plot draws the difference against the unguided FID (a curve per sampler and
scale: does the gain shrink as the model and the sampler get better?) and, per sampler, the difference as a
scale x checkpoint grid on one diverging colour scale.
"""

import re
from dataclasses import dataclass

from guided_diffusion.experiments.sweep import baseline_for, expand_points, point_config, point_key

__all__ = ["MapRow", "sampler_name", "checkpoint_step", "map_rows", "map_table", "plot_gain_map"]

_STEP = re.compile(r"(\d+)\.pt$")


@dataclass(frozen=True)
class MapRow:
    sampler: str
    step: int
    scale: float
    comparison: dict  # evaluations.bootstrap.compare's record: a = unguided, b = guided

    def value(self, side, metric="fid"):
        return self.comparison[side][metric], self.comparison[side]["intervals"].get(metric)

    def difference(self, metric="fid"):
        return self.comparison["difference"][metric], self.comparison["difference_intervals"].get(metric)

    def wins(self, metric="fid"):
        sets = self.comparison.get("seed_sets") or {}
        return ((sets.get("wins") or {}).get(metric) or {}).get("b_better"), sets.get("count")


def sampler_name(config):
    """`DDIM-25` or `DDPM-100` from a point's sampling flags."""
    respacing = str(config.get("timestep_respacing") or "")
    steps = re.sub(r"\D", "", respacing) or str(config.get("diffusion_steps", 1000))
    return f"{'DDIM' if config.get('use_ddim') else 'DDPM'}-{steps}"


def checkpoint_step(path):
    """The training step in a checkpoint's file name (`ema_0.999_009400.pt` -> 9400)."""
    match = _STEP.search(str(path))
    if not match:
        raise ValueError(f"cannot read a training step from the checkpoint name {path!r} (expected ...NNNNNN.pt)")
    return int(match.group(1))


def map_rows(spec, comparisons, scale_flag):
    """The map's rows, sorted by sampler, step and scale: one per guided point with a comparison."""
    rows = []
    for point in expand_points(spec):
        key = point_key(point)
        if key == point_key(baseline_for(spec, point)) or "difference" not in comparisons.get(key, {}):
            continue
        config = point_config(spec, point)
        rows.append(MapRow(sampler_name(config), checkpoint_step(config["model_path"]), float(config[scale_flag]),
                           comparisons[key]))
    return sorted(rows, key=lambda r: (_sampler_order(r.sampler), r.step, r.scale))


def _sampler_order(name):
    kind, steps = name.split("-")
    return kind != "DDIM", int(steps)


def map_table(rows, metrics=("precision", "recall")):
    """Markdown: a row per comparison; the paired differences bold where their interval excludes zero."""
    from evaluations.tables import difference_cell, header, value_cell

    head = ["sampler", "step", "s", "unguided FID↓", "FID↓", "ΔFID [paired 95%] (w/K)",
            *(f"Δ{header(m)}" for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    for row in rows:
        cells = [row.sampler, f"{row.step:,}", f"{row.scale:g}", value_cell("fid", *row.value("a")),
                 value_cell("fid", *row.value("b")), difference_cell("fid", *row.difference(), *row.wins())]
        cells += [difference_cell(m, *row.difference(m)) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_gain_map(rows, path, title="PAG's gain: paired ΔFID against the unguided FID"):
    """Two panels: ΔFID against unguided FID (a curve per sampler and scale, steps annotated), and per sampler
    the ΔFID grid of scale x checkpoint on one colour scale centred at zero. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    samplers = list(dict.fromkeys(r.sampler for r in rows))
    # each grid as wide as its checkpoints need, so a one-checkpoint sampler does not take a full panel
    widths = [max(0.5, 0.32 * len({r.step for r in rows if r.sampler == s})) for s in samplers]
    fig = plt.figure(figsize=(8 + 3.2 * sum(widths), 4.8), layout="constrained")
    grid = fig.add_gridspec(1, 1 + len(samplers), width_ratios=[2.4] + widths)
    ax = fig.add_subplot(grid[0])
    colours = dict(zip(samplers, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = ["-", "--", ":", "-.", (0, (1, 4)), (0, (5, 2, 1, 2, 1, 2))]
    scales = sorted({r.scale for r in rows})
    for sampler in samplers:
        for scale in scales:
            series = [r for r in rows if r.sampler == sampler and r.scale == scale]
            if not series:
                continue
            xs = [r.value("a")[0] for r in series]
            ys, intervals = zip(*(r.difference() for r in series))
            errors = [[y - lo for y, (lo, _) in zip(ys, intervals)], [hi - y for y, (_, hi) in zip(ys, intervals)]]
            style = styles[scales.index(scale) % len(styles)]
            ax.errorbar(xs, ys, yerr=errors, color=colours[sampler], linestyle=style, marker="o", markersize=4,
                        capsize=3, label=f"{sampler}, s = {scale:g}")
            for r, x, y in zip(series, xs, ys):
                ax.annotate(f"{r.step:,}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colours[sampler])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("unguided FID at that checkpoint and sampler (log scale; labels: training step)")
    ax.set_ylabel("ΔFID = FID(PAG) − FID(unguided), paired 95%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    limit = max(abs(r.difference()[0]) for r in rows) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    image = None
    for index, sampler in enumerate(samplers):
        panel = fig.add_subplot(grid[1 + index])
        steps = sorted({r.step for r in rows if r.sampler == sampler})
        own = sorted({r.scale for r in rows if r.sampler == sampler})
        values = [[float("nan")] * len(steps) for _ in own]
        for r in rows:
            if r.sampler == sampler:
                values[own.index(r.scale)][steps.index(r.step)] = r.difference()[0]
        image = panel.imshow(values, cmap="RdBu_r", norm=norm, aspect="auto", origin="lower")
        for r in (r for r in rows if r.sampler == sampler):
            delta, (lo, hi) = r.difference()
            bold = "bold" if lo > 0 or hi < 0 else "normal"
            ink = "white" if abs(norm(delta) - 0.5) > 0.3 else "black"  # legible on the dark ends of the scale
            digits = 0 if max(abs(lo), abs(hi)) >= 10 else 1  # whole numbers fit the cell; small ones keep a digit
            panel.text(steps.index(r.step), own.index(r.scale), f"{delta:+.1f}\n[{lo:+.{digits}f}, {hi:+.{digits}f}]",
                       ha="center", va="center", fontsize=6.5, fontweight=bold, color=ink)
        panel.set_xticks(range(len(steps)), [f"{s:,}" for s in steps], fontsize=7)
        panel.set_yticks(range(len(own)), [f"{s:g}" for s in own], fontsize=7)
        panel.set_xlabel("checkpoint (training step)")
        panel.set_ylabel("PAG scale s")
        panel.set_title(sampler, fontsize=10)
    fig.colorbar(image, ax=fig.axes[1:], label="ΔFID (blue: PAG better; bold: interval excludes 0)", shrink=0.9)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

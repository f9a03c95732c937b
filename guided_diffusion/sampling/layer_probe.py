"""Which attention blocks does PAG's perturbation actually move?  A probe that needs no sampling.

For each attention block and each chosen noise level t, held-out images x0 are noised (x_t = q(x_t | x0)
with seeded noise) and the model predicts the noise twice: normally (eps) and with that one block's
attention map replaced by the identity (eps_perturbed, an `attention.AttentionPlan`).  Per image:

* movement = ||eps - eps_perturbed|| / ||eps||   how far the perturbation moves the prediction; PAG's
  guidance term s * (eps - eps_perturbed) is this, times s;
* error = mean((eps - noise)^2)                 the model's own error on that noised image.

The probe reports the mean movement per (block, t) and the Spearman rank correlation between movement and
error over the images: a block whose perturbation moves the prediction most where the model errs most is
a candidate for guidance; a block that moves it by a fraction of a percent cannot change much at a small
scale.  A sample sweep still decides; the probe says which layers are worth sweeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from guided_diffusion.model.attention import AttentionPlan, attention_blocks, unwrap

DEFAULT_TIMESTEPS = (50, 250, 500, 750, 950)


@dataclass
class LayerProbe:
    """Probe results: ``movement[l, t, i]`` and ``error[t, i]`` for layers l, timesteps t and images i."""

    layers: List[str]
    timesteps: List[int]
    movement: np.ndarray
    error: np.ndarray
    num_timesteps: int
    resolutions: Dict[str, str] = field(default_factory=dict)

    @property
    def mean_movement(self):
        return self.movement.mean(axis=2)

    @property
    def correlation(self):
        """Spearman's rho between movement and error over the images, per (layer, timestep)."""
        rho = np.full(self.movement.shape[:2], np.nan)
        err_ranks = [_ranks(e) for e in self.error]
        for layer in range(self.movement.shape[0]):
            for t in range(self.movement.shape[1]):
                rho[layer, t] = _pearson(_ranks(self.movement[layer, t]), err_ranks[t])
        return rho

    def to_dict(self):
        return {
            "layers": self.layers,
            "timesteps": self.timesteps,
            "num_timesteps": self.num_timesteps,
            "num_images": int(self.error.shape[1]),
            "resolutions": self.resolutions,
            "mean_movement": self.mean_movement.tolist(),
            "spearman_movement_vs_error": self.correlation.tolist(),
            "mean_error": self.error.mean(axis=1).tolist(),
        }


def _ranks(values):
    """Ranks with ties averaged (what Spearman's rho correlates)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or sorted_values[i] != sorted_values[start]:
            ranks[order[start:i]] = (start + i - 1) / 2
            start = i
    return ranks


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def _resolutions(model, images, layers):
    """Spatial size at each block ("8x8"), read from one forward pass with hooks."""
    sizes, hooks = {}, []
    blocks = attention_blocks(unwrap(model))

    def record(name):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            sizes.setdefault(name, "x".join(map(str, output.shape[2:])))
        return hook

    for name in layers:
        hooks.append(blocks[name].register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(images[:1], torch.zeros(1, dtype=torch.long, device=images.device))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


@torch.no_grad()
def probe_layers(
    model,
    diffusion,
    images,
    timesteps=DEFAULT_TIMESTEPS,
    layers=None,
    *,
    seed=0,
    batch_size=256,
    model_kwargs=None,
):
    """Probe ``layers`` (default: every attention block) of ``model`` on ``images`` ([N, 3, H, W] in [-1, 1]).

    ``diffusion`` is the model's base (unrespaced) process and ``timesteps`` are its steps ``0 .. T-1``.
    The noise of timestep t comes from ``torch.Generator().manual_seed(seed + t)``, so results are
    reproducible and the same for every layer.
    """
    layers = list(layers) if layers else list(attention_blocks(unwrap(model)))
    if not layers:
        raise ValueError("the model has no attention blocks to probe")
    # one plan per layer: its identity map in the whole batch (a ValueError lists the model's blocks)
    plans = {layer: AttentionPlan.from_names(model, [[layer]]) for layer in layers}
    steps = diffusion.num_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < steps]
    if bad:
        raise ValueError(f"timesteps must lie in 0..{steps - 1} (the base process); got {bad}")
    model_kwargs = model_kwargs or {}
    n, device = images.shape[0], images.device
    movement = np.zeros((len(layers), len(timesteps), n))
    error = np.zeros((len(timesteps), n))
    for ti, t in enumerate(timesteps):
        generator = torch.Generator().manual_seed(int(seed) + int(t))
        noise = torch.randn(images.shape, generator=generator).to(device)
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            t_vec = torch.full((rows.stop - rows.start,), int(t), dtype=torch.long, device=device)
            x_t = diffusion.q_sample(images[rows], t_vec, noise=noise[rows])
            model_t = diffusion.model_timesteps(t_vec)
            kwargs = {k: v[rows] for k, v in model_kwargs.items()}
            eps = model(x_t, model_t, **kwargs)[:, :3]
            error[ti, rows] = ((eps - noise[rows]) ** 2).flatten(1).mean(dim=1).cpu().numpy()
            norm = eps.flatten(1).norm(dim=1)
            for li, layer in enumerate(layers):
                eps_perturbed = model(x_t, model_t, **kwargs, attention=plans[layer])[:, :3]
                moved = (eps - eps_perturbed).flatten(1).norm(dim=1) / norm
                movement[li, ti, rows] = moved.cpu().numpy()
    return LayerProbe(layers, [int(t) for t in timesteps], movement, error, steps,
                      _resolutions(model, images, layers))


def markdown_table(probe):
    """One row per block: mean movement and Spearman rho (movement vs error) at each noise level."""
    move, rho = probe.mean_movement, probe.correlation
    head = ["block", "size"] + [f"t={t}" for t in probe.timesteps] + ["mean movement", "mean ρ"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for li, layer in enumerate(probe.layers):
        cells = [f"`{layer}`", probe.resolutions.get(layer, "")]
        cells += [f"{100 * move[li, ti]:.2f}% (ρ {rho[li, ti]:+.2f})" for ti in range(len(probe.timesteps))]
        cells += [f"{100 * move[li].mean():.2f}%", f"{np.nanmean(rho[li]):+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(probe, path):
    """PNG: a heat map of the mean movement (log colour scale) and rho against t per block.

    Returns the path, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError:
        return None
    move = 100 * probe.mean_movement
    rho = probe.correlation
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(probe.layers) + 2.4),
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    positive = move[move > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=max(positive.max(), 1e-3)) if positive.size else None
    image = left.imshow(np.where(move > 0, move, np.nan), aspect="auto", cmap="viridis", norm=norm)
    left.set_xticks(range(len(probe.timesteps)), [str(t) for t in probe.timesteps])
    left.set_yticks(range(len(probe.layers)), probe.layers)
    left.set_xlabel(f"timestep t (of {probe.num_timesteps}; larger = noisier)")
    left.set_title("movement ||eps - eps_perturbed|| / ||eps||")
    for li in range(len(probe.layers)):
        for ti in range(len(probe.timesteps)):
            bright = norm is not None and move[li, ti] > 0 and norm(move[li, ti]) > 0.6  # dark text on yellow
            left.text(ti, li, f"{move[li, ti]:.2g}%", ha="center", va="center", fontsize=7,
                      color="black" if bright else "white")
    fig.colorbar(image, ax=left, label="mean movement (%)")
    for li, layer in enumerate(probe.layers):
        right.plot(probe.timesteps, rho[li], marker="o", label=layer)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_xlabel("timestep t")
    right.set_ylabel("Spearman ρ (movement vs eps error)")
    right.set_title("movement vs the model's error, per image")
    right.legend(fontsize="small", title="block")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)

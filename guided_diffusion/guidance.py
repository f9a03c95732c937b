"""Sampling guidance: PAG, SAG and classifier guidance through one guided-prediction path.

Scales follow the PAG paper (Eq. 10): ``eps~ = eps + s * (eps - eps_perturbed)``. The official PAG and SAG
scripts write ``eps~ = eps_perturbed + g * (eps - eps_perturbed)``; the two agree for ``s = g - 1``, so
their ``--guide_scale 4.0`` is ``scale=3.0`` here. Several guidances may be combined; each adds its own
``s_i * (eps - eps_i)``. All attention perturbations of a step run as one batch through the model, sharing
every layer before the first perturbed block.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .attention import AttentionPlan, perturbed_attention, select_blocks, unwrap

__all__ = ["perturbed_attention"]  # the bare perturbation, importable from here as before

# The official PAG layers for ADM ImageNet 256 (the deepest input blocks and the middle block).
OFFICIAL_PAG_LAYERS_256 = ("input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class Guidance:
    """Common options: the paper's scale `s`, an optional interval and a scale schedule.

    `interval=(lo, hi)` limits the guidance to base-process timesteps lo <= t <= hi (0 .. T-1, so it means the
    same for any respacing). `schedule` shapes the scale over the process with u = t / (T - 1) (1 = pure
    noise): `constant` s, `linear` s * u, `cosine` s * (1 - cos(pi * u)) / 2 (both strongest early).
    """

    scale: float
    interval: Optional[Tuple[int, int]] = None
    schedule: str = "constant"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.interval is not None:
            lo, hi = self.interval
            if not 0 <= lo <= hi:
                raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi, got {self.interval}")

    def scale_at(self, t_base, num_base_steps):
        """The scale for each sample at base-process timesteps `t_base` ([B] long tensor)."""
        u = t_base.double() / max(num_base_steps - 1, 1)
        if self.schedule == "linear":
            weight = u
        elif self.schedule == "cosine":
            weight = (1 - torch.cos(math.pi * u)) / 2
        else:
            weight = torch.ones_like(u)
        scale = self.scale * weight
        if self.interval is not None:
            lo, hi = self.interval
            scale = torch.where((t_base >= lo) & (t_base <= hi), scale, torch.zeros_like(scale))
        return scale.float()

    def validate(self, model):
        """Check the guidance against the model before any sampling starts."""


@dataclass
class PerturbedAttentionGuidance(Guidance):
    """PAG: the perturbed pass uses the identity attention map at `layers`.

    `layers=None` takes the official ImageNet-256 set, which a model must have.
    """

    layers: Optional[Sequence[str]] = None

    def resolved_layers(self, model):
        layers = list(self.layers) if self.layers is not None else list(OFFICIAL_PAG_LAYERS_256)
        if not layers:
            raise ValueError("PAG needs at least one attention layer")
        select_blocks(model, layers)
        return layers

    def validate(self, model):
        self.resolved_layers(model)


@dataclass
class SelfAttentionGuidance(Guidance):
    """SAG (Hong et al., 2023): blur the predicted x0 where the attention map of `layer` is high.

    `map_heads="official"` reproduces the official SAG code: the map is computed from the block's qkv
    with the legacy head split into the model's `num_heads` flag, which differs from the block's own head
    count when `num_head_channels` is set. `map_heads="block"` uses the block's own heads and layout (the
    corrected variant).
    """

    blur_sigma: float = 9.0
    layer: str = "middle_block.1"
    map_heads: str = "official"
    threshold: float = 1.0
    kernel_size: int = 31

    def __post_init__(self):
        super().__post_init__()
        if self.map_heads not in ("official", "block"):
            raise ValueError(f"map_heads must be 'official' or 'block', got {self.map_heads!r}")

    def validate(self, model):
        select_blocks(model, [self.layer])

    def capture(self, model):
        """(layer, heads, legacy) of the attention map SAG needs."""
        (block,) = select_blocks(model, [self.layer])
        if self.map_heads == "official":
            return self.layer, unwrap(model).num_heads, True
        return self.layer, block.num_heads, block.legacy

    def degrade(self, pred_xstart, attention_map):
        """Blur `pred_xstart` where the key positions receive more than `threshold` total attention."""
        batch, _, height, width = pred_xstart.shape
        received = attention_map.sum(dim=1)  # [B, keys]: total attention each key position receives
        side = math.isqrt(received.shape[1])
        if side * side != received.shape[1]:
            raise ValueError(f"SAG needs a square attention map, got {received.shape[1]} positions")
        mask = (received > self.threshold).reshape(batch, 1, side, side).to(pred_xstart.dtype)
        mask = F.interpolate(mask, size=(height, width), mode="nearest")
        blurred = gaussian_blur(pred_xstart, self.kernel_size, self.blur_sigma)
        return blurred * mask + pred_xstart * (1 - mask)


class ClassifierGuidance:
    """ADM classifier guidance: `scale * grad_x log p(y | x_t)` from a noisy-image classifier."""

    def __init__(self, classifier, scale, interval=None, schedule="constant"):
        self.classifier = classifier
        self.options = Guidance(scale, interval, schedule)

    def gradient(self, x, t_model, y):
        """grad_x of sum_i log_softmax(classifier(x, t))[i, y_i]."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t_model), dim=-1)
            selected = log_probs[torch.arange(len(log_probs), device=x.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0]

    def cond_fn(self, diffusion, t):
        scale = self.options.scale_at(torch.as_tensor(diffusion.timestep_map, device=t.device)[t],
                                      diffusion.original_num_steps)

        def cond_fn(x, t_model, y=None, **_):
            if y is None:
                raise ValueError("classifier guidance needs class labels: pass model_kwargs={'y': labels}")
            return self.gradient(x, t_model, y) * scale.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))

        return cond_fn

    def validate(self, model):
        pass


def gaussian_blur(images, kernel_size, sigma):
    """Per-channel Gaussian blur with reflect padding (the same kernel as torchvision's GaussianBlur)."""
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel1d = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = kernel1d / kernel1d.sum()
    kernel2d = torch.mm(kernel1d[:, None], kernel1d[None, :])
    channels = images.shape[1]
    pad = kernel_size // 2
    padded = F.pad(images, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, kernel2d.expand(channels, 1, kernel_size, kernel_size), groups=channels)


def as_list(guidance):
    if guidance is None:
        return []
    if isinstance(guidance, (list, tuple)):
        return list(guidance)
    return [guidance]


def validate(guidance, model):
    """Check every guidance against `model` (layer names, ...) before sampling starts."""
    for item in as_list(guidance):
        item.validate(model)


def classifier_fn(cond_fn, guidance, diffusion=None, t=None):
    """The classifier-gradient function of a step: an explicit `cond_fn`, or the guidance's classifier."""
    classifiers = [g for g in as_list(guidance) if isinstance(g, ClassifierGuidance)]
    if cond_fn is not None and classifiers:
        raise ValueError("pass classifier guidance either as cond_fn or as a ClassifierGuidance, not both")
    if len(classifiers) > 1:
        raise ValueError("at most one ClassifierGuidance per sampler")
    if classifiers:
        return classifiers[0].cond_fn(diffusion, t)
    return cond_fn


def guided_prediction(diffusion, model, x, t, guidance, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                      details=None):
    """The one guided-prediction path of every sampler.

    Runs the normal pass and all active attention perturbations as one batch, adds SAG's second pass where
    asked, combines ``eps~ = eps + sum_i s_i (eps - eps_i)``, keeps the variance of the normal pass, and
    recomputes (and clips) the x0 prediction from ``eps~``. Classifier guidance is applied by the step
    (`condition_mean` / `condition_score`), after this.

    `details`, if a dict, receives the intermediates: `eps`, `guided_eps`, and per active guidance (in order)
    `perturbed_eps` and its `scale`; SAG adds `degraded_x` (the input of its second pass).
    """
    model_kwargs = model_kwargs or {}
    items = as_list(guidance)
    batch = x.shape[0]
    t_base = torch.as_tensor(diffusion.timestep_map, device=t.device)[t]
    active = []
    for item in items:
        if isinstance(item, (PerturbedAttentionGuidance, SelfAttentionGuidance)):
            scale = item.scale_at(t_base, diffusion.original_num_steps).to(x.device)
            if bool((scale != 0).any()):
                active.append((item, scale.reshape(-1, *([1] * (x.ndim - 1)))))
        elif not isinstance(item, ClassifierGuidance):
            raise TypeError(f"unsupported guidance {item!r}")

    pag = [(g, s) for g, s in active if isinstance(g, PerturbedAttentionGuidance)]
    sag = [(g, s) for g, s in active if isinstance(g, SelfAttentionGuidance)]
    extra = {}
    if pag or sag:
        extra["attention"] = AttentionPlan.from_names(model, [()] + [g.resolved_layers(model) for g, _ in pag],
                                                      [g.capture(model) for g, _ in sag])
    output = diffusion.run_model(model, x, t, **model_kwargs, **extra)
    captured = ()
    if sag:
        output, captured = output
    eps, var = diffusion.split_output(output[:batch], x)

    record = details if details is not None else {}
    record.update(eps=eps, perturbed_eps=[], scale=[], degraded_x=[])
    guided = eps
    for k, (_, scale) in enumerate(pag):
        eps_perturbed, _ = diffusion.split_output(output[(k + 1) * batch:(k + 2) * batch], x)
        guided = guided + scale * (eps - eps_perturbed)
        record["perturbed_eps"].append(eps_perturbed)
        record["scale"].append(scale)
    if sag:
        first = diffusion.prediction_from_output(eps, var, x, t, clip_denoised, denoised_fn)
        noise = _as_eps(diffusion, x, t, eps)
        for (g, scale), attention_map in zip(sag, captured):
            degraded = g.degrade(first["pred_xstart"], attention_map[:batch])
            x_degraded = diffusion.q_sample(degraded, t, noise=noise)
            eps_degraded, _ = diffusion.split_output(diffusion.run_model(model, x_degraded, t, **model_kwargs), x)
            guided = guided + scale * (eps - eps_degraded)
            record["perturbed_eps"].append(eps_degraded)
            record["scale"].append(scale)
            record["degraded_x"].append(x_degraded)
    record["guided_eps"] = guided
    return diffusion.prediction_from_output(guided, var, x, t, clip_denoised, denoised_fn)


def _as_eps(diffusion, x, t, mean_output):
    from .gaussian_diffusion import ModelMeanType

    if diffusion.model_mean_type == ModelMeanType.EPSILON:
        return mean_output
    if diffusion.model_mean_type == ModelMeanType.START_X:
        return diffusion._predict_eps_from_xstart(x, t, mean_output)
    raise ValueError("SAG needs an eps- or x0-predicting model")

"""The guided denoiser: a model, its diffusion and its guidances, bound once per run.

Binding resolves every PAG / SAG layer name to its attention block once (an unknown name raises one
ValueError listing the model's blocks, before any step), reads what SAG's map needs from the model, and
picks the classifier gradient (the release's `cond_fn` or a `ClassifierGuidance`). Calling the bound
denoiser with (x_t, t) gives the guided prediction of every sampler:

    eps~ = eps + sum_i s_i (eps - eps_i)

The normal pass and every active PAG perturbation run as one batch (one `attention.AttentionPlan`: every
layer before the first perturbed block runs once), the attention maps SAG needs come back from the same
call, and each SAG adds its second pass on its degraded x0. The variance is the normal pass's; the x0
prediction is recomputed (and clipped) from eps~. Classifier guidance is applied by the sampler step,
after this (`samplers`).
"""

from .attention import AttentionPlan, select_blocks
from .guidance import ClassifierGuidance, PerturbedAttentionGuidance, SelfAttentionGuidance, as_list, layer_names


class GuidedDenoiser:
    """`denoiser(x, t)` -> the guided prediction of `model` under `diffusion` at step indices `t`.

    `model_kwargs` (e.g. class labels `y`), `clip_denoised` and `denoised_fn` are fixed for the run, as
    the release's samplers take them. `cond_fn(x, t_model, **model_kwargs)` is the release's classifier
    gradient; pass it or a `ClassifierGuidance` in `guidance`, not both.
    """

    def __init__(self, diffusion, model, guidance=None, *, model_kwargs=None, clip_denoised=True, denoised_fn=None,
                 cond_fn=None):
        self.diffusion, self.model = diffusion, model
        self.model_kwargs = dict(model_kwargs or {})
        self.clip_denoised, self.denoised_fn = clip_denoised, denoised_fn
        items = as_list(guidance)
        names = layer_names(items)  # a TypeError for anything that is no guidance
        blocks = dict(zip(names, select_blocks(model, names))) if names else {}
        self.pag = [(g, frozenset(blocks[name] for name in g.layer_names()))
                    for g in items if isinstance(g, PerturbedAttentionGuidance)]
        self.sag = [(g, (blocks[g.layer], *g.map_layout(model, blocks[g.layer])))
                    for g in items if isinstance(g, SelfAttentionGuidance)]
        self.cond_fn, self.classifier = cond_fn, _one_classifier(cond_fn, items, self.model_kwargs)

    def __call__(self, x, t):
        """The prediction dict of `diffusion.prediction_from_output` ("mean", "variance", "log_variance",
        "pred_xstart", "raw_pred_xstart") for eps~, with its parts: "eps" (the normal pass's mean output),
        "guided_eps", and per active guidance in order (PAG first) "perturbed_eps" and "scale"; SAG adds
        "degraded_x" (its second pass's input) and "maps" (the attention maps it used)."""
        diffusion, batch = self.diffusion, x.shape[0]
        t_base = diffusion.base_timesteps(t) if self.pag or self.sag else None
        pag, sag = self._active(self.pag, t_base, x), self._active(self.sag, t_base, x)
        extra = {}
        if pag or sag:
            extra["attention"] = AttentionPlan((frozenset(),) + tuple(copy for _, copy, _ in pag),
                                               tuple(capture for _, capture, _ in sag))
        output = diffusion.run_model(self.model, x, t, **self.model_kwargs, **extra)
        maps = ()
        if sag:
            output, maps = output
        eps, var = diffusion.split_output(output[:batch], x)

        parts = {"eps": eps, "perturbed_eps": [], "scale": [], "degraded_x": [], "maps": list(maps)}
        guided = eps
        for k, (_, _, scale) in enumerate(pag):
            eps_perturbed, _ = diffusion.split_output(output[(k + 1) * batch:(k + 2) * batch], x)
            guided = guided + scale * (eps - eps_perturbed)
            parts["perturbed_eps"].append(eps_perturbed)
            parts["scale"].append(scale)
        if sag:
            first = diffusion.prediction_from_output(eps, var, x, t, self.clip_denoised, self.denoised_fn)
            noise = diffusion.eps_from_output(x, t, eps)
            for (g, _, scale), attention_map in zip(sag, maps):
                x_degraded = diffusion.q_sample(g.degrade(first["pred_xstart"], attention_map), t, noise=noise)
                output_degraded = diffusion.run_model(self.model, x_degraded, t, **self.model_kwargs)
                eps_degraded, _ = diffusion.split_output(output_degraded, x)
                guided = guided + scale * (eps - eps_degraded)
                parts["perturbed_eps"].append(eps_degraded)
                parts["scale"].append(scale)
                parts["degraded_x"].append(x_degraded)
        parts["guided_eps"] = guided
        prediction = diffusion.prediction_from_output(guided, var, x, t, self.clip_denoised, self.denoised_fn)
        return {**prediction, **parts}

    def classifier_gradient(self, x, t):
        """The classifier term of the step (grad_x log p(y | x_t), times its scale), or None without one."""
        if self.cond_fn is None and self.classifier is None:
            return None
        diffusion = self.diffusion
        t_model = diffusion.model_timesteps(t)
        if self.cond_fn is not None:
            return self.cond_fn(x, t_model, **self.model_kwargs)
        return self.classifier.scaled_gradient(x, t_model, self.model_kwargs["y"], diffusion.base_timesteps(t),
                                               diffusion.original_num_steps)

    def _active(self, entries, t_base, x):
        """(guidance, bound part, per-row scale) of the entries whose scale is not zero at this step."""
        active = []
        for guidance, bound in entries:
            scale = guidance.scale_at(t_base, self.diffusion.original_num_steps).to(x.device)
            if bool((scale != 0).any()):
                active.append((guidance, bound, scale.reshape(-1, *([1] * (x.ndim - 1)))))
        return active


def _one_classifier(cond_fn, items, model_kwargs):
    """The run's `ClassifierGuidance`, if any, after the checks that need no step."""
    classifiers = [g for g in items if isinstance(g, ClassifierGuidance)]
    if cond_fn is not None and classifiers:
        raise ValueError("pass classifier guidance either as cond_fn or as a ClassifierGuidance, not both")
    if len(classifiers) > 1:
        raise ValueError("at most one ClassifierGuidance per sampler")
    if classifiers and model_kwargs.get("y") is None:
        raise ValueError("classifier guidance needs class labels: pass model_kwargs={'y': labels}")
    return classifiers[0] if classifiers else None


def guided_prediction(diffusion, model, x, t, guidance, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                      details=None):
    """One guided prediction without keeping the binding; `details`, if a dict, receives its parts."""
    prediction = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                denoised_fn=denoised_fn)(x, t)
    if details is not None:
        details.update(prediction)
    return prediction

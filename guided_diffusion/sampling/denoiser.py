"""The guided denoiser: a model, its diffusion and its guidance methods, bound once per run.

Binding gives each method its `GuidanceRun` (an unknown layer name raises one ValueError listing the
model's blocks, before any step). Calling the bound denoiser with (x_t, t) gives the guided prediction
that every sampler uses:

    eps~ = eps + sum_i term_i        (PAG, SAG, ...: term_i = s_i * (eps - eps_i))

Order: the normal pass, the extra copies of every active run and their input copies (the same images
with other labels: CFG's null pass) go through the network as one batch (one `attention.AttentionPlan`:
every layer before the first edited block runs once for the copies), with the attention maps the runs
read; then the terms are added to eps in registration order of the methods (PAG, SAG, then later
modules; runs of one method in the order given), each computed from the unguided eps. A run that needs a
pass on another input or network (SAG, autoguidance) makes it through `GuidedStep.evaluate`. The
variance is the normal pass's; the x0 prediction is recomputed (and clipped) from eps~. Gradient methods
(classifier guidance) are applied by the sampler step, after this (`samplers`).
"""

import torch

from guided_diffusion.diffusion.schedules import per_row
from guided_diffusion.guidance import as_list, registered_methods, validate
from guided_diffusion.guidance.base import GuidanceMethod
from guided_diffusion.model.attention import AttentionPlan


class GuidedStep:
    """What a run's `term` sees at one step: x, t, the normal pass's eps and variance output, and lazily
    the unguided x0 prediction and noise, or a plain pass of the model on another input (`evaluate`)."""

    def __init__(self, denoiser, x, t, eps, var):
        self.denoiser, self.diffusion = denoiser, denoiser.diffusion
        self.x, self.t, self.eps, self.var = x, t, eps, var
        self._first = self._noise = None

    def first_prediction(self):
        if self._first is None:
            d = self.denoiser
            self._first = self.diffusion.prediction_from_output(self.eps, self.var, self.x, self.t, d.clip_denoised,
                                                                d.denoised_fn)
        return self._first

    def noise(self):
        if self._noise is None:
            self._noise = self.diffusion.eps_from_output(self.x, self.t, self.eps)
        return self._noise

    def evaluate(self, x, model=None):
        """The mean output of an unedited pass on `x` at this step, with the run's model_kwargs: of the run's
        model or of another `model` (autoguidance's weak one). Other model inputs on the same images are input
        copies of the main call instead (`GuidanceRun.input_copies`)."""
        output = self.diffusion.run_model(model or self.denoiser.model, x, self.t, **self.denoiser.model_kwargs)
        return output[:, :x.shape[1]]  # the mean part, whether or not that network learns its variance


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
        methods = as_list(guidance)
        for item in methods:
            if not isinstance(item, GuidanceMethod):
                raise TypeError(f"unsupported guidance {item!r}: use one of "
                                + ", ".join(cls.__name__ for cls in registered_methods()))
        validate(methods, model)  # every unknown layer name of every method in one error, before binding
        order = {cls: k for k, cls in enumerate(registered_methods())}
        # stable: runs of one method keep the order they were given in
        methods = sorted(methods, key=lambda m: order.get(type(m), len(order)))
        self.runs = [method.bind(model, self.model_kwargs) for method in methods]
        gradient_runs = [run for run in self.runs if run.gives_gradient]
        if cond_fn is not None and gradient_runs:
            raise ValueError("pass classifier guidance either as cond_fn or as a ClassifierGuidance, not both")
        if len(gradient_runs) > 1:
            raise ValueError("at most one gradient guidance (ClassifierGuidance) per sampler")
        self.cond_fn, self.gradient_runs = cond_fn, gradient_runs
        self.term_runs = [run for run in self.runs if run not in gradient_runs]

    def __call__(self, x, t):
        """The prediction dict of `diffusion.prediction_from_output` ("mean", "variance", "log_variance",
        "pred_xstart", "raw_pred_xstart") for eps~, with its parts: "eps" (the normal pass's mean output),
        "guided_eps", and per active term in order "perturbed_eps" (what it guides away from) and "scale";
        "maps" (the attention maps read) and each run's extras (SAG: "degraded_x") as lists."""
        diffusion, batch = self.diffusion, x.shape[0]
        active = self._active(x, t)
        copies = [{}] + [copy for run, _ in active for copy in run.copies]
        inputs = [inputs for run, _ in active for inputs in run.input_copies]
        captures = [capture for run, _ in active for capture in run.captures]
        x_all, t_all, model_kwargs = stack_input_copies(x, t, self.model_kwargs, inputs)
        if len(copies) > 1 or captures:
            model_kwargs["attention"] = AttentionPlan(tuple(copies), tuple(captures), len(inputs))
        output = diffusion.run_model(self.model, x_all, t_all, **model_kwargs)
        maps = ()
        if captures:
            output, maps = output
        eps, var = diffusion.split_output(output[:batch], x)

        def mean_part(index):  # of copy `index` in the output: the copies, then the input copies
            return diffusion.split_output(output[index * batch:(index + 1) * batch], x)[0]

        step = GuidedStep(self, x, t, eps, var)
        parts = {"eps": eps, "perturbed_eps": [], "scale": [], "maps": list(maps), "degraded_x": []}
        guided, copy, input_copy, map_index = eps, 1, len(copies), 0
        for run, scale in active:
            outputs = ([mean_part(copy + k) for k in range(len(run.copies))]
                       + [mean_part(input_copy + k) for k in range(len(run.input_copies))])
            run_maps = maps[map_index:map_index + len(run.captures)]
            copy, input_copy = copy + len(run.copies), input_copy + len(run.input_copies)
            map_index += len(run.captures)
            term = run.term(step, outputs, run_maps, scale)
            guided = guided + term.value
            parts["perturbed_eps"].append(term.other)
            parts["scale"].append(scale)
            for key, value in term.extras.items():
                parts.setdefault(key, []).append(value)
        parts["guided_eps"] = guided
        prediction = diffusion.prediction_from_output(guided, var, x, t, self.clip_denoised, self.denoised_fn)
        return {**prediction, **parts}

    def classifier_gradient(self, x, t):
        """The gradient term of the step (grad_x log p(y | x_t), times its scale), or None without one."""
        if self.cond_fn is None and not self.gradient_runs:
            return None
        diffusion = self.diffusion
        t_model = diffusion.model_timesteps(t)
        if self.cond_fn is not None:
            return self.cond_fn(x, t_model, **self.model_kwargs)
        return self.gradient_runs[0].gradient(x, t_model, self.model_kwargs, diffusion.base_timesteps(t),
                                              diffusion.original_num_steps)

    def _active(self, x, t):
        """(run, per-row scale [B, 1, ...]) of the term runs whose scale is not zero at this step."""
        if not self.term_runs:
            return []
        t_base = self.diffusion.base_timesteps(t)
        active = []
        for run in self.term_runs:
            scale = run.method.scale_at(t_base, self.diffusion.original_num_steps).to(x.device)
            if bool((scale != 0).any()):
                active.append((run, per_row(scale, x)))
        return active


def stack_input_copies(x, t, model_kwargs, input_copies):
    """(x, t, model_kwargs) of one network call that runs the batch and then, per entry of `input_copies`,
    the same rows with those model inputs replaced (e.g. `{"y": null_labels}`): per-row tensors are stacked
    along dim 0, other values must be the same in every copy."""
    if not input_copies:
        return x, t, dict(model_kwargs)
    groups = [dict(model_kwargs)] + [{**model_kwargs, **replaced} for replaced in input_copies]
    stacked = {}
    for key in {key for group in groups for key in group}:
        values = [group.get(key) for group in groups]
        if all(isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == x.shape[0] for v in values):
            stacked[key] = torch.cat(values)
        elif any(v is not values[0] for v in values[1:]):
            raise ValueError(f"model input {key!r} is not a tensor of one row per image, so a copy of the batch "
                             "cannot replace it")
        else:
            stacked[key] = values[0]
    copies = len(groups)
    return x.repeat(copies, *([1] * (x.ndim - 1))), t.repeat(copies), stacked


def guided_prediction(diffusion, model, x, t, guidance, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                      details=None):
    """One guided prediction without keeping the binding; `details`, if a dict, receives its parts."""
    prediction = GuidedDenoiser(diffusion, model, guidance, model_kwargs=model_kwargs, clip_denoised=clip_denoised,
                                denoised_fn=denoised_fn)(x, t)
    if details is not None:
        details.update(prediction)
    return prediction

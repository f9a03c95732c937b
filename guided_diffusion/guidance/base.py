"""The one interface every guidance method implements, and the registry that turns methods into flags.

A method is a dataclass whose fields are its settings. Every method has the common three: the scale `s`
of the PAG paper (Eq. 10: its term is `s * (eps - eps_other)`; 0 turns it off), an optional interval of
base timesteps and a scale schedule. A field declared with `option()` carries its flag help, the flag's
default where it differs, a parser for the flag's text and a check; `flags.py` turns the fields of every
registered method into `--{prefix}_{field}` flags, YAML keys and `describe()` entries, so a method is
declared once.

At sampling time a method is bound to a model for one run (`bind`), which gives a `GuidanceRun`: the
run says which extra predictions it needs (copies of the main pass with edited attention blocks, attention
maps of the normal pass) and turns them into its term of the guided prediction (`term`); state that lasts
a run (momentum) lives on the run object, never on modules. Gradient methods (classifier guidance) give
`gradient` instead, which the sampler step applies as ADM does.
"""

import dataclasses
import math
from typing import Any, ClassVar, Dict, NamedTuple, Optional, Tuple

import torch

from guided_diffusion.cli.scales import check_scale
from guided_diffusion.model.attention import select_blocks

SCHEDULES = ("constant", "linear", "cosine")
REGISTRY: Dict[str, type] = {}  # prefix -> method class, in registration order (the order terms are added)


def register(cls):
    """Class decorator: make a guidance method known to the flags, the YAML configs and the denoiser."""
    if cls.prefix in REGISTRY and REGISTRY[cls.prefix] is not cls:
        raise ValueError(f"guidance prefix {cls.prefix!r} is taken by {REGISTRY[cls.prefix].__name__}")
    REGISTRY[cls.prefix] = cls
    return cls


def registered_methods():
    return list(REGISTRY.values())


def option(default=dataclasses.MISSING, help="", *, flag_default=dataclasses.MISSING, parse=None, check=None,
           flag=True):
    """A method's setting: its default, the help of its flag, the flag's own default where the field has none
    or a different one, `parse(text, flag)` from the flag's value to the field's, and `check(value, name)`
    (raises ValueError). `flag=False`: a setting the API takes but no flag (e.g. a loaded network)."""
    metadata = {"help": help, "parse": parse, "check": check, "flag": flag,
                "flag_default": default if flag_default is dataclasses.MISSING else flag_default}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_interval(text, flag):
    """`'lo,hi'` -> (lo, hi); empty -> None (every step)."""
    if text is None or isinstance(text, (tuple, list)):
        return None if text is None else tuple(text)
    if not str(text).strip():
        return None
    try:
        lo, hi = (int(p.strip()) for p in str(text).split(","))
    except ValueError:
        raise ValueError(f"--{flag} must be 'lo,hi' in base timesteps (e.g. '0,999'), got {text!r}") from None
    return lo, hi


def check_interval(interval, name):
    if interval is not None:
        lo, hi = interval
        if not 0 <= lo <= hi:
            raise ValueError(f"{name} must satisfy 0 <= lo <= hi, got {tuple(interval)}")


def check_schedule(schedule, name):
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r} for {name}: use one of {', '.join(SCHEDULES)}")


@dataclasses.dataclass
class GuidanceMethod:
    """Common settings. `interval=(lo, hi)` limits the guidance to base-process timesteps lo <= t <= hi
    (0 .. T-1, so it means the same for any respacing). `schedule` shapes the scale over the process with
    u = t / (T - 1) (1 = pure noise): `constant` s, `linear` s * u, `cosine` s * (1 - cos(pi * u)) / 2."""

    prefix: ClassVar[str] = ""
    needs_network: ClassVar[bool] = False  # True: a loaded network (not a flag) completes it, e.g. a classifier
    network_field: ClassVar[str] = ""  # the field that holds that network
    # Flag help and default of the common fields, per method: {"scale": {"help": ..., "default": ...}}.
    flag_overrides: ClassVar[Dict[str, Dict[str, Any]]] = {}

    scale: float = option(help="guidance scale s (0 = off; negative values guide the other way)", flag_default=0.0,
                          check=check_scale)
    interval: Optional[Tuple[int, int]] = option(
        None, "apply only at base timesteps lo<=t<=hi, given as 'lo,hi' (default: every step)", flag_default="",
        parse=parse_interval, check=check_interval)
    schedule: str = option("constant", f"scale schedule over the process: {'/'.join(SCHEDULES)}",
                           check=check_schedule)

    def __post_init__(self):
        if isinstance(self.interval, list):  # as YAML and JSON give it
            self.interval = tuple(self.interval)
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(getattr(self, f.name), f"{type(self).__name__}.{f.name}")

    # ------------------------------------------------------------------------------------------------
    # What the flags and manifests see

    @classmethod
    def enabled_by(cls, values):
        """Whether flag values `{field: value}` turn the method on (default: a non-zero scale)."""
        return values["scale"] != 0

    def settings(self):
        """{field: value} of the flagged fields, tuples as lists (manifests, `describe`)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self) if f.metadata.get("flag", True)}

    def flag_settings(self):
        """{flag name: value}: this method's entries in `describe()` and in manifests."""
        return {f"{self.prefix}_{name}": value for name, value in self.settings().items()}

    @classmethod
    def from_flag_values(cls, values, args, **resources):
        """The method from its parsed flag values `{field: value}` (`args`: all flags, for methods that wrap
        another) and non-flag fields such as a loaded network."""
        return cls(**values, **resources)

    def layer_names(self):
        """The attention blocks this method names (checked against a model at binding)."""
        return []

    # ------------------------------------------------------------------------------------------------
    # Sampling

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

    def bind(self, model, model_kwargs):
        """This method's `GuidanceRun` on `model` (its layer names resolved: an unknown one raises a
        ValueError listing the model's blocks). `model_kwargs` are the run's (e.g. labels `y`)."""
        raise NotImplementedError


class Term(NamedTuple):
    """A run's contribution at one step: `value` is added to eps; `other` is the prediction it guides away
    from (for the guidance pictures); `extras` are intermediates worth showing (e.g. SAG's degraded input)."""

    value: torch.Tensor
    other: torch.Tensor
    extras: Dict[str, torch.Tensor] = {}


class GuidanceRun:
    """A method bound to a model for one sampling run.

    `copies`: one `{block: AttentionEdit}` per extra copy of the main pass it needs (all runs' copies go
    through the network as one batch with the normal pass). `input_copies`: one `{name: value}` per extra
    pass on the same images with other model inputs (CFG: the null labels `y`), run unedited in that same
    network call. `captures`: `(block, heads, legacy)` for each attention map of the normal pass it reads.
    `term(step, outputs, maps, scale)` gets the model outputs of its copies, then of its input copies (mean
    parts, in order), its maps and the per-row scale ([B, 1, 1, 1]) and returns a `Term`; `gradient`
    (gradient methods) returns the sampler's shift instead.
    """

    copies: Tuple[dict, ...] = ()
    input_copies: Tuple[dict, ...] = ()
    captures: Tuple[tuple, ...] = ()
    gives_gradient = False  # True: `gradient` instead of `term`

    def __init__(self, method):
        self.method = method

    def term(self, step, outputs, maps, scale):
        return None

    def gradient(self, x, t_model, model_kwargs, t_base, num_base_steps):
        return None


def resolve_blocks(model, names):
    """{name: attention block} of `model` (the ValueError for unknown names lists its blocks)."""
    return dict(zip(names, select_blocks(model, names)))


"""Flags, YAML keys and manifest entries of every registered guidance method, generated from its fields.

Method `pag` with fields scale, interval, schedule, layers gives `--pag_scale`, `--pag_interval`,
`--pag_schedule`, `--pag_layers` (and the same YAML keys), each with the field's help, default and check;
`guidance_from_flags` builds the methods the flags turn on and `describe` gives their settings keyed like
the flags. Nothing here names a method: a registered method gets all of this by being registered.
"""

import dataclasses

from guided_diffusion.cli.flags import Flag, FlagGroup, raising

from .base import REGISTRY

TITLE = "guidance (scales are the PAG paper's s = official g - 1)"


def _flag_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


def _flag(cls, f):
    override = cls.flag_overrides.get(f.name, {})
    name = f"{cls.prefix}_{f.name}"
    default = override.get("default", f.metadata["flag_default"])
    default = list(default) if isinstance(default, tuple) else default

    def check(flag, value, args):
        _field_value(cls, f, value)  # parse and check alone: the method's own check runs at construction

    return Flag(name, default, override.get("help", f.metadata["help"]), raising(check))


def _field_value(cls, f, value):
    """The field value of a flag value: parsed, then checked."""
    flag = f"{cls.prefix}_{f.name}"
    parse, check = f.metadata.get("parse"), f.metadata.get("check")
    value = parse(value, flag) if parse is not None else value
    if check is not None:
        check(value, f"--{flag}")
    return value


def guidance_flags(methods=None, title=TITLE):
    """The FlagGroup of `methods` (default: every registered method)."""
    methods = registered_methods_or(methods)
    return FlagGroup(title, [_flag(cls, f) for cls in methods for f in _flag_fields(cls)])


def network_free_methods():
    """The registered methods that flags alone describe (for scripts that load no extra network)."""
    return [cls for cls in REGISTRY.values() if not cls.needs_network]


def registered_methods_or(methods):
    return list(REGISTRY.values()) if methods is None else list(methods)


def _flag_values(cls, args):
    return {f.name: _field_value(cls, f, getattr(args, f"{cls.prefix}_{f.name}")) for f in _flag_fields(cls)}


def method_from_flags(cls, args, **resources):
    """`cls` with its settings from the flags in `args` (and non-flag fields such as a loaded network)."""
    return cls.from_flag_values(_flag_values(cls, args), args, **resources)


def guidance_from_flags(args, methods=None):
    """The methods that the flags in `args` turn on, in registration order (ValueError for bad values).
    Methods that need a loaded network are left to `method_from_flags`, and methods whose flags are not
    in `args` (a script that declares only some) are skipped."""
    items = []
    for cls in registered_methods_or(methods):
        if cls.needs_network or not hasattr(args, f"{cls.prefix}_scale"):
            continue
        values = _flag_values(cls, args)
        if cls.enabled_by(values):
            items.append(cls.from_flag_values(values, args))
    return items


def describe(items):
    """The settings of guidance objects as a flat dict keyed like the flags (`pag_scale`, `sag_layer`, ...).

    Only guidances that are given appear, so flags of a guidance that is off change nothing."""
    out = {}
    for item in items:
        out.update(item.flag_settings())
    return out

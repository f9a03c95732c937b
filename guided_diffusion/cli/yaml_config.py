"""`--config FILE.yaml` files whose keys are flag names (the flags themselves are declared in `flags`).

Precedence: the flag defaults, then the YAML files (`--config` may be given several times; the files
apply in order, so later files win), then flags given on the command line. A config file composes others
with `include: [a.yaml, b.yaml]` (paths relative to the including file): they apply first, in order, and
the file's own keys win. YAML values are converted by
the flag's own type (`use_fp16: true`, `timestep_respacing: 250` and `pag_layers: [a, b]` all work), and a
key that is not a flag is an error naming the closest flags.
"""

import argparse
import difflib
import os

import yaml


def load_yaml(path):
    """The mapping in a YAML config file (flag name -> value)."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except OSError as error:
        raise ValueError(f"cannot read config file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of flag names to values")
    return values


INCLUDE_KEY = "include"


def load_config(path, origins=None, _chain=()):
    """A config file's flag values with its `include:` files applied first (recursively).

    `origins`, if given, is filled with flag name -> the file that set it (for error messages).
    """
    path = os.path.normpath(os.path.abspath(path))
    if path in _chain:
        raise ValueError("config files include each other: " + " -> ".join(_chain[_chain.index(path):] + (path,)))
    values = dict(load_yaml(path))
    includes = values.pop(INCLUDE_KEY, None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ValueError(f"config file {path}: '{INCLUDE_KEY}' must be a file name or a list of file names")
    merged = {}
    for name in includes:
        merged.update(load_config(os.path.join(os.path.dirname(path), name), origins, _chain + (path,)))
    merged.update(values)
    if origins is not None:
        origins.update(dict.fromkeys(values, path))
    return merged


def flag_actions(parser):
    """{flag name: argparse action} of a parser's flags (what YAML keys and sweep overrides may name)."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


def convert_value(action, value):
    """A YAML value converted as if it had been typed on the command line."""
    if value is None:
        return None
    if action.nargs == 0:  # a switch (store_true): YAML's own booleans
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    convert = action.type or str
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value.split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return [convert(_as_text(v)) for v in items]
    if isinstance(value, dict) or (isinstance(value, (list, tuple)) and convert is not str):
        raise ValueError("expected a single value")
    return convert(_as_text(value))


def _as_text(value):
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):  # e.g. `attention_resolutions: [32, 16, 8]`
        return ",".join(_as_text(v) for v in value)
    return str(value)


def parse_args(parser, argv=None, config_flag="config"):
    """Parse `argv` with YAML defaults from each `--config FILE` (which `parser` must define), in order.

    The parser may declare the flag for one file (`default=None`) or several (`action="append"`); either
    way every `--config` on the command line is read, later files overriding earlier ones.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(f"--{config_flag}", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    paths = [path for path in getattr(known, config_flag) if path]
    if paths:
        actions = flag_actions(parser)
        defaults = {}
        for path in paths:
            defaults.update(_config_defaults(parser, actions, path, config_flag))
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _config_defaults(parser, actions, path, config_flag):
    """The flag values of one config file, converted (a bad file is a `parser.error`)."""
    origins = {}
    try:
        values = load_config(path, origins)
    except ValueError as error:
        parser.error(str(error))
    defaults = {}
    for key, value in values.items():
        where = origins.get(key, path)
        if key == config_flag or key not in actions:
            close = difflib.get_close_matches(str(key), list(actions), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            parser.error(f"config file {where}: {key!r} is not a flag of this script{hint}")
        try:
            defaults[key] = convert_value(actions[key], value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            parser.error(f"config file {where}: bad value {value!r} for {key}: {error}")
    return defaults

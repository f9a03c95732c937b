"""Command-line flags declared once: each `Flag` holds its default, help and check.

A script lists its `FlagGroup`s; `create_parser` turns them into argparse groups behind the one shared
`--config FILE.yaml` flag (repeatable, see `config.parse_args`), `check_flags` runs every flag's check and
reports all problems in one ValueError (and logs the warnings of settings that run but are likely a mistake),
and `FlagGroup.values` gives a group's values for a manifest.

A flag's type follows its default, as in the ADM release: booleans parse True/False, yes/no...; a list
default takes one or more values; a None default takes a string (or `type`). A `switch` is a boolean that is
off by default and given bare (`--dry_run`); a config file sets it with true or false.
"""

import argparse
import dataclasses
import logging
from typing import Any, Callable, Optional

from guided_diffusion.cli.scales import check_scale
from guided_diffusion.cli.yaml_config import parse_args
from guided_diffusion.runtime import distributed

CONFIG_FLAG = "config"

log = logging.getLogger(__name__)


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {v!r}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every flag's default, unless its help already says what
    the default is (e.g. an empty default that means something computed)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@dataclasses.dataclass(frozen=True)
class Flag:
    """`--name`: its default, help, optional `choices` and `check(flag, value, args)`, which returns a
    problem message (naming `flag`, e.g. "--seed") or None; it sees all of `args` for checks across flags.
    `warn(flag, value, args)` is called alike for a setting that works but is likely a mistake: it returns
    a warning that says what to set, or None."""

    name: str
    default: Any
    help: str
    check: Optional[Callable] = None
    choices: Optional[tuple] = None
    type: Optional[Callable] = None
    warn: Optional[Callable] = None
    switch: bool = False

    def argparse_kwargs(self):
        if self.switch:
            if self.default is not False:
                raise ValueError(f"--{self.name}: a switch is off by default (default False); got {self.default!r}")
            return {"action": "store_true", "help": self.help}
        kwargs = {"default": self.default, "help": self.help}
        if self.choices is not None:
            kwargs["choices"] = self.choices
        if isinstance(self.default, bool):
            kwargs["type"] = str2bool
        elif isinstance(self.default, (list, tuple)):
            kwargs.update(type=str, nargs="+")
        else:
            kwargs["type"] = self.type or (str if self.default is None else type(self.default))
        return kwargs

    def problem(self, args):
        return None if self.check is None else self.check(f"--{self.name}", getattr(args, self.name), args)

    def warning(self, args):
        return None if self.warn is None else self.warn(f"--{self.name}", getattr(args, self.name), args)

    def but(self, **changes):
        """This flag with other fields (e.g. the help of another script)."""
        return dataclasses.replace(self, **changes)


class FlagGroup:
    """Flags shown together under `title` in the help."""

    def __init__(self, title, flags):
        self.title, self.flags = title, tuple(flags)

    @classmethod
    def from_defaults(cls, title, defaults, helps):
        """Flags from a dict of defaults (the release's `*_defaults()`) and one help text per flag."""
        missing = [name for name in defaults if not helps.get(name)]
        if missing:
            raise ValueError(f"flags without a help text: {', '.join(missing)}")
        return cls(title, [Flag(name, default, helps[name]) for name, default in defaults.items()])

    def __getitem__(self, name):
        return next(flag for flag in self.flags if flag.name == name)

    def replace(self, *flags):
        """The group with `flags` in place of its flags of the same names (e.g. with a script's own check)."""
        new = {flag.name: flag for flag in flags}
        return FlagGroup(self.title, [new.get(flag.name, flag) for flag in self.flags])

    @property
    def names(self):
        return [flag.name for flag in self.flags]

    def defaults(self):
        return {flag.name: flag.default for flag in self.flags}

    def values(self, args, exclude=()):
        """{name: value} of the group's flags in `args` (for manifests and reports)."""
        return {name: getattr(args, name) for name in self.names if name not in exclude}

    def only(self, names, title=None):
        """The group restricted to `names` (in the group's order)."""
        return FlagGroup(title or self.title, [flag for flag in self.flags if flag.name in names])

    @classmethod
    def not_used(cls, title, groups, used):
        """Every flag of `groups` that none of the groups `used` declares, accepted but not used and not
        checked: so that a script takes another script's config files and command lines (`changed` names
        those that were set)."""
        declared = {name for group in used for name in group.names}
        flags = {flag.name: flag for group in groups for flag in group.flags if flag.name not in declared}
        return cls(title, [flag.but(help=f"not used here; {flag.help}", check=None, warn=None)
                           for flag in flags.values()])

    def changed(self, args):
        """The names of the group's flags whose values in `args` are not their defaults."""
        return [flag.name for flag in self.flags if getattr(args, flag.name) != flag.default]

    def add_to(self, parser):
        group = parser.add_argument_group(self.title)
        for flag in self.flags:
            group.add_argument(f"--{flag.name}", **flag.argparse_kwargs())

    def problems(self, args):
        return [p for flag in self.flags if (p := flag.problem(args)) is not None]

    def warnings(self, args):
        return [w for flag in self.flags if (w := flag.warning(args)) is not None]


def create_parser(description, groups):
    """An argparse parser of the flag groups, behind the one `--config FILE.yaml` flag."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument(f"--{CONFIG_FLAG}", action="append", default=[], metavar="FILE.yaml",
                        help="YAML file of flag values (keys are flag names; repeatable, later files win; "
                             "'include: [a.yaml, ...]' composes files); command-line flags override them")
    for group in groups:
        group.add_to(parser)
    return parser


def parse(parser, argv=None):
    """Flags of `argv` (default: the command line) with the `--config` files applied."""
    return parse_args(parser, argv, config_flag=CONFIG_FLAG)


def check_flags(args, groups):
    """Raise one ValueError listing every problem the groups' checks find in `args`; else log each warning of
    their flags once (on rank 0 of a multi-process launch)."""
    problems = [p for group in groups for p in group.problems(args)]
    if problems:
        raise ValueError("; ".join(problems))
    if distributed.rank() == 0:
        for warning in [w for group in groups for w in group.warnings(args)]:
            log.warning("warning: %s", warning)


# ----------------------------------------------------------------------------------------------------
# Checks shared by many flags


def required(flag, value, args):
    return None if value else f"{flag} is required"


def at_least(low):
    def check(flag, value, args):
        return None if value >= low else f"{flag} must be at least {low}"
    return check


def raising(validate):
    """A check from `validate(flag, value, args)`, which raises a ValueError naming the problem."""
    def check(flag, value, args):
        try:
            validate(flag, value, args)
        except ValueError as error:
            return str(error)
        return None
    return check


# a guidance scale or step size: any finite number (negative ones too)
finite = raising(lambda flag, value, args: check_scale(value, flag))


def all_of(*checks):
    """The first problem any of `checks` finds."""
    def check(flag, value, args):
        return next((p for c in checks if (p := c(flag, value, args)) is not None), None)
    return check

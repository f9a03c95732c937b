"""A sweep spec read and checked before anything runs, its points, and its baseline.

The keys a spec may have are `SPEC_KEYS` (with their types); any other key is refused with the closest
known key, so that a misspelt `grid` or `intervals` fails instead of running one point or the default.
The keys of a point (in `grid:` or `points:`) are sampler flags, plus `label` and `config`; they are
checked against the sampler's own parser when the spec is loaded, and each point's whole config (its
files and overrides, with the sampler's flag checks) before a run or a dry run starts.

The points are the explicit `points:` first, then the grid's combinations, whatever the order of the two in
the file; the baseline is the spec's `baseline:` (overrides or a label), else the first point. With `pair_by:`
(a list of point keys, e.g. [model_path, config]) every point has its own baseline: the point that shares its
values of those keys and has the baseline's overrides, so that one sweep holds many paired comparisons (one
per checkpoint and sampler, say).
"""

import argparse
import difflib
import hashlib
import itertools
import json
import os
from pathlib import Path

import yaml

from guided_diffusion.cli.flags import check_flags, parse
from guided_diffusion.cli.yaml_config import convert_value, flag_actions, load_config
from guided_diffusion.sampling.run import FLAG_GROUPS, create_sampler_parser

REPO_ROOT = Path(__file__).resolve().parents[2]

STATISTICS_DEFAULTS = {"intervals": 1000, "seed_sets": 5, "bootstrap_seed": 0}
_TEXT, _LIST, _INTEGER = (str,), (list,), (int,)
SPEC_KEYS = {  # key: (allowed types, what the error calls them)
    "name": (_TEXT, "a string"), "base": (_TEXT, "a string (a config file)"),
    "reference": (_TEXT, "a string (an npz file)"), "output_dir": (_TEXT, "a string (a folder)"),
    "launch": (_TEXT, 'a string (e.g. "mpiexec -n 8")'),
    "evaluator_args": (_LIST, "a list of arguments"), "prepare_reference": (_LIST, "a list of arguments"),
    "grid": ((dict,), "a mapping of flag names to lists of values"),
    "points": (_LIST, "a list of mappings of flag names to values"),
    "baseline": ((dict, str), "a point's overrides (a mapping) or its label (a string)"),
    "baseline_note": (_TEXT, "a string (why the baseline is the baseline, for the table's caption)"),
    "intervals": (_INTEGER, "an integer"), "seed_sets": (_INTEGER, "an integer"),
    "bootstrap_seed": (_INTEGER, "an integer"),
    "pair_by": (_LIST, "a list of point keys (flag names or config)"),
    "also_compare_with": (_LIST, "a list of points (labels or overrides) every row is compared with as well"),
}
POINT_KEYS = ("label", "config")  # a point's keys that are not flags
BASELINE_RULE = "by default the first row: the first of the spec's `points`, else the first grid point"


def load_spec(path):
    """The spec at `path`, checked, with its paths made absolute and its defaults filled in (ValueError)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read sweep spec {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"sweep spec {path} is not valid YAML: {' '.join(str(error).split())}") from None
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ValueError(f"sweep spec {path} must be a mapping of keys ({', '.join(SPEC_KEYS)})")
    _check_keys_and_types(spec, path)
    if "reference" not in spec:
        raise ValueError(f"sweep spec {path} has no 'reference' entry")
    if not spec.get("grid") and not spec.get("points"):
        raise ValueError(f"sweep spec {path} needs a 'grid' or a 'points' list (neither has any point)")
    if "base" not in spec and not all("config" in p for p in expand_points(spec)):
        raise ValueError(f"sweep spec {path} has no 'base' entry (needed unless every point names its 'config')")
    root = REPO_ROOT  # like every config path in the project, spec paths are relative to the repository root
    for key in ("base", "reference", "output_dir"):
        if key in spec and not os.path.isabs(str(spec[key])):
            spec[key] = str(root / spec[key])
    points = expand_points(spec)
    for point in points:
        for config_path in config_files(point):
            if not (root / config_path).exists():
                raise ValueError(f"sweep spec {path}: point {point.get('label', point)} names the config file "
                                 f"{config_path}, which does not exist")
    problems = _override_problems(spec)
    if problems:
        raise ValueError(f"sweep spec {path}: " + "; ".join(problems))
    spec.setdefault("name", path.stem)
    spec.setdefault("output_dir", str(root / "runs" / spec["name"]))
    for key, default in STATISTICS_DEFAULTS.items():
        value = spec.setdefault(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"sweep spec {path}: '{key}' must be a non-negative integer; got {value!r}")
    if spec["intervals"] == 1 or spec["seed_sets"] < 1:
        raise ValueError(f"sweep spec {path}: 'intervals' must be 0 or at least 2 and 'seed_sets' at least 1")
    for one_baseline, _ in comparison_specs(spec):  # a baseline that matches no point fails here, before any sampling
        for point in points:
            baseline_for(one_baseline, point)
    return spec


def _did_you_mean(key, known):
    close = difflib.get_close_matches(str(key), list(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _check_keys_and_types(spec, path):
    for key, value in spec.items():
        if key not in SPEC_KEYS:
            raise ValueError(f"sweep spec {path}: unknown key {key!r}{_did_you_mean(key, SPEC_KEYS)}; the keys "
                             f"are {', '.join(SPEC_KEYS)}")
        types, described = SPEC_KEYS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError(f"sweep spec {path}: '{key}' must be {described}; got {value!r}")
    for name, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ValueError(f"sweep spec {path}: grid: '{name}' must be a list of values, e.g. {name}: [{values!r}]")
        if not values:
            raise ValueError(f"sweep spec {path}: grid: '{name}' has an empty list of values (no point to run)")
    for point in spec.get("points") or []:
        if not isinstance(point, dict):
            raise ValueError(f"sweep spec {path}: points: each point must be a mapping of flag names to values; "
                             f"got {point!r}")
    for point in expand_points(spec):
        if not isinstance(point.get("label", ""), str):
            raise ValueError(f"sweep spec {path}: a point's 'label' must be a string; got {point['label']!r}")
        files = point.get("config", [])
        if not isinstance(files, (str, list)) or not all(isinstance(f, str) for f in config_files(point)):
            raise ValueError(f"sweep spec {path}: a point's 'config' must be a file name or a list of them; "
                             f"got {files!r}")


def _sampler_parser():
    """The sampler's own parser (pag-image-sample), whose problems raise ValueError instead of exiting."""
    parser = create_sampler_parser(None)

    def error(message):
        raise ValueError(message)

    parser.error = error
    return parser


def _override_problems(spec):
    """What the sampler would refuse in the points' and the grid's flag names and values; a problem of the
    grid names the first grid point that has it."""
    actions = flag_actions(_sampler_parser())
    problems = []
    for point in spec.get("points") or []:
        for key, value in _overrides(point).items():
            problem = _flag_problem(actions, key, value)
            if problem:
                problems.append(f"point {describe_point(point)} (from the points): {problem}")
    grid = spec.get("grid") or {}
    first = {key: values[0] for key, values in grid.items()}
    for key, values in _overrides(grid).items():
        for value in values[:1] if key not in actions else values:
            problem = _flag_problem(actions, key, value)
            if problem:
                problems.append(f"point {describe_point({**first, key: value})} (from the grid): {problem}")
    return problems


def _flag_problem(actions, key, value):
    if key not in actions:
        return f"{key!r} is not a flag of the sampler{_did_you_mean(key, actions)}"
    try:
        convert_value(actions[key], value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        return f"bad value {value!r} for {key}: {error}"
    return None


def describe_point(point):
    """A point as the user wrote it: its label in quotes, else its overrides as JSON."""
    return json.dumps(point["label"]) if "label" in point else json.dumps(point, sort_keys=True)


def check_point_flags(spec):
    """Every point's whole config (its files, then its overrides) parsed and checked as the sampler will;
    raises one ValueError naming the first point the sampler would refuse."""
    for point in expand_points(spec):
        parser = _sampler_parser()
        argv = [arg for path in _point_files(spec, point) for arg in ("--config", path)]
        try:
            args = parse(parser, argv)
            actions = flag_actions(parser)
            for key, value in _overrides(point).items():
                setattr(args, key, convert_value(actions[key], value))
            check_flags(args, FLAG_GROUPS)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"sweep {spec.get('name', '')!r}: point {describe_point(point)}: {error}") from None


def point_key(overrides):
    """A stable, readable key: the overrides as sorted JSON, hashed for the folder name."""
    text = json.dumps(overrides, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def expand_points(spec):
    """The list of override dicts: the explicit points, then the grid's product (in the grid's key order)."""
    points = [dict(p) for p in spec.get("points") or []]
    grid = spec.get("grid") or {}
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            points.append(dict(zip(keys, values)))
    return points


def baseline_point(spec):
    """The point every other point is compared with: the spec's `baseline` (overrides or label), else the
    first point (the first of `points`, else the first grid point). With `pair_by`: the first row's baseline
    (each row has its own: `baseline_for`)."""
    points = expand_points(spec)
    if spec.get("pair_by") and points:
        return baseline_for(spec, points[0])
    wanted = spec.get("baseline")
    if wanted is None:
        return points[0] if points else None
    for point in points:
        if (isinstance(wanted, dict) and point == wanted) or (isinstance(wanted, str) and point.get("label") == wanted):
            return point
    listed = "; ".join(json.dumps(p, sort_keys=True) for p in points)
    raise ValueError(f"sweep baseline {wanted!r} matches no point (by overrides, or by label); points: {listed}")


def baseline_for(spec, point):
    """The point that `point` is compared with: the baseline, or with `pair_by` the point that has the same
    values of the `pair_by` keys and the baseline's overrides (ValueError when there is none)."""
    keys = spec.get("pair_by") or []
    if not keys:
        return baseline_point(spec)
    wanted = spec.get("baseline")
    if not isinstance(wanted, dict):
        raise ValueError("sweep spec: 'pair_by' needs a 'baseline' given as overrides (a mapping such as "
                         "{pag_scale: 0.0}), which each group's baseline point has")
    target = {**wanted, **{k: point[k] for k in keys if k in point}}
    for candidate in expand_points(spec):
        if all(candidate.get(k) == point.get(k) for k in keys) and _has(candidate, wanted):
            return candidate
    raise ValueError(f"sweep spec: point {describe_point(point)} has no baseline of its own: pair_by "
                     f"{', '.join(keys)} needs a point with {json.dumps(target, sort_keys=True)}; add it to the points")


def _has(point, overrides):
    return all(k in point and point[k] == v for k, v in overrides.items())


def comparison_specs(spec):
    """[(spec with one baseline, name of its comparison files)]: the baseline's (`compare`), then one per entry
    of `also_compare_with` (`compare_vs_<its point key>`), so that every row has its paired differences from
    each (say, from unguided and from PAG)."""
    specs = [(spec, "compare")]
    for other in spec.get("also_compare_with") or []:
        if not isinstance(other, (dict, str)):
            raise ValueError(f"sweep spec: 'also_compare_with' entries must be labels or overrides; got {other!r}")
        one = {**spec, "baseline": other}
        specs.append((one, f"compare_vs_{point_key(baseline_point(one))}"))
    return specs


def baseline_rule(spec):
    """Why the baseline is the baseline, in words (for the table): the spec's `baseline_note`, else the rule."""
    if spec.get("baseline_note"):
        return spec["baseline_note"]
    if spec.get("pair_by"):
        return f"set by the spec's `baseline`, each row against the one with the same {', '.join(spec['pair_by'])}"
    return "set by the spec's `baseline`" if spec.get("baseline") is not None else BASELINE_RULE


def config_files(point):
    files = point.get("config") or []
    return [files] if isinstance(files, str) else list(files)


def _point_files(spec, point):
    return [str(REPO_ROOT / f) for f in config_files(point)] or [spec["base"]]


def _overrides(point):
    return {k: v for k, v in point.items() if k not in POINT_KEYS}


def point_config(spec, overrides):
    """The point's flag values: its own `config` files (else the spec's `base`), then its overrides."""
    config = {}
    for path in _point_files(spec, overrides):
        config.update(load_config(path))
    config.update(_overrides(overrides))
    return config

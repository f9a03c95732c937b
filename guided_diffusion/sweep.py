"""Config-driven sweeps: expand a grid of overrides, sample and evaluate each point, tabulate the results.

A sweep spec (YAML):

    name: pag_scale
    base: configs/table1/adm256_uncond_pag.yaml     # sampling config (flag names as keys; `include:` works)
    reference: VIRTUAL_imagenet256_labeled.npz      # evaluator reference batch
    evaluator_args: []                              # extra evaluator flags, e.g. [--backend, digits]
    output_dir: runs/pag_scale                      # point folders and results.jsonl go here
    grid:                                           # every combination ...
      pag_scale: [1.0, 2.0, 3.0, 4.0]
    points:                                         # ... or an explicit list (both may be given)
      - {pag_scale: 0.0}
    launch: "mpiexec -n 8"                          # optional prefix of the sampling command
    prepare_reference: [python, -m, guided_diffusion.digits, --split, heldout, --out, "{reference}"]
                                                    # optional: makes the reference batch when it is missing

Commands run from the repository root, so paths inside sampling configs (model_path) are relative to it.
Each point is keyed by its overrides; `results.jsonl` holds one line per finished or failed point, and a
rerun skips the points already done. Relative paths in a spec are relative to the
repository root. A point may carry a `label` (not a flag) that names its row in the table, and a
`config` (a config file, or a list of them) that replaces `base` for that point, so that a sweep can run
the rows of a table from their own files:

    points:
      - {label: "uncond ADM", config: configs/table1/adm256_uncond_unguided.yaml}
      - {label: "uncond + PAG", config: configs/table1/adm256_uncond_pag.yaml}
"""

import hashlib
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .config import load_config
from .sample_store import batch_name
from .script_util import model_and_diffusion_defaults

REPO_ROOT = Path(__file__).resolve().parents[1]

METRICS = (("FID", "min"), ("sFID", "min"), ("IS", "max"), ("Precision", "max"), ("Recall", "max"))
_METRIC_KEYS = {"FID": "fid", "sFID": "sfid", "IS": "inception_score", "Precision": "precision", "Recall": "recall"}


def load_spec(path):
    path = Path(path)
    spec = yaml.safe_load(path.read_text()) or {}
    if "reference" not in spec:
        raise ValueError(f"sweep spec {path} has no 'reference' entry")
    if "grid" not in spec and "points" not in spec:
        raise ValueError(f"sweep spec {path} needs a 'grid' or a 'points' list")
    if "base" not in spec and (spec.get("grid") or not all("config" in p for p in spec["points"])):
        raise ValueError(f"sweep spec {path} has no 'base' entry (needed unless every point names its 'config')")
    root = REPO_ROOT  # like every config path in the project, spec paths are relative to the repository root
    for key in ("base", "reference", "output_dir"):
        if key in spec and not os.path.isabs(str(spec[key])):
            spec[key] = str(root / spec[key])
    for point in spec.get("points") or []:
        for config_path in _config_files(point):
            if not (root / config_path).exists():
                raise ValueError(f"sweep spec {path}: point {point.get('label', point)} names the config file "
                                 f"{config_path}, which does not exist")
    spec.setdefault("name", path.stem)
    spec.setdefault("output_dir", str(root / "runs" / spec["name"]))
    return spec


def expand_points(spec):
    """The list of override dicts: the grid's product (in the spec's key order), then explicit points."""
    points = []
    grid = spec.get("grid") or {}
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            points.append(dict(zip(keys, values)))
    points.extend(dict(p) for p in spec.get("points") or [])
    return points


def point_key(overrides):
    """A stable, readable key: the overrides as sorted JSON, hashed for the folder name."""
    text = json.dumps(overrides, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def read_results(path):
    results = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                results[record["key"]] = record
    return results


def _append(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _config_files(point):
    files = point.get("config") or []
    return [files] if isinstance(files, str) else list(files)


def point_config(spec, overrides):
    """The point's flag values: its own `config` files (else the spec's `base`), then its overrides."""
    files = [str(REPO_ROOT / f) for f in _config_files(overrides)] or [spec["base"]]
    config = {}
    for path in files:
        config.update(load_config(path))
    config.update({k: v for k, v in overrides.items() if k not in ("label", "config")})
    return config


def point_commands(spec, overrides, point_dir):
    """(sampling command, evaluation command, samples path) for one point; writes the point's config."""
    config = point_config(spec, overrides)
    point_dir.mkdir(parents=True, exist_ok=True)
    config_path = point_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=True))
    launch = shlex.split(spec.get("launch", ""))
    sample = launch + [sys.executable, "-m", "scripts.image_sample", "--config", str(config_path),
                       "--output_dir", str(point_dir / "samples")]
    from scripts.image_sample import SAMPLE_DEFAULTS  # the sampler's defaults fix the file name

    size = config.get("image_size", model_and_diffusion_defaults()["image_size"])
    num_samples = config.get("num_samples", SAMPLE_DEFAULTS["num_samples"])
    samples = point_dir / "samples" / (batch_name(num_samples, (size, size, 3)) + ".npz")
    evaluate = [sys.executable, "-m", "evaluations.evaluator", spec["reference"], str(samples),
                "--json", str(point_dir / "metrics.json")] + [str(a) for a in spec.get("evaluator_args", [])]
    return sample, evaluate, samples


def run_sweep(spec, dry_run=False, log=print, env=None):
    """Run every pending point; return {key: record}. With dry_run, print the commands instead."""
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    if spec.get("prepare_reference") and not Path(spec["reference"]).exists() and not dry_run:
        command = [sys.executable if c == "python" else str(c).replace("{reference}", spec["reference"])
                   for c in spec["prepare_reference"]]
        _run(command, out / "prepare_reference.log", env)
    done = {k for k, r in read_results(results_path).items() if r["status"] == "ok"}
    points = expand_points(spec)
    for index, overrides in enumerate(points):
        key = point_key(overrides)
        label = json.dumps(overrides, sort_keys=True)
        if key in done:
            log(f"[{index + 1}/{len(points)}] {label}: done, skipped")
            continue
        point_dir = out / key
        sample_cmd, eval_cmd, samples = point_commands(spec, overrides, point_dir)
        if dry_run:
            log(shlex.join(sample_cmd))
            log(shlex.join(eval_cmd))
            continue
        log(f"[{index + 1}/{len(points)}] {label}: sampling and evaluating in {point_dir}")
        start = time.time()
        record = {"key": key, "overrides": overrides}
        try:
            _run(sample_cmd, point_dir / "sample.log", env)
            _run(eval_cmd, point_dir / "evaluate.log", env)
            metrics = json.loads((point_dir / "metrics.json").read_text())
            record.update(status="ok", metrics=metrics, samples=str(samples))
        except Exception as error:  # one failed point must not stop the sweep
            record.update(status="failed", error=str(error)[-2000:])
            log(f"    failed: {str(error).splitlines()[-1] if str(error) else type(error).__name__}")
        record["seconds"] = round(time.time() - start, 1)
        _append(results_path, record)
    return read_results(results_path)


def _run(cmd, log_path, env):
    with open(log_path, "w") as log_file:
        proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        tail = Path(log_path).read_text()[-1500:]
        raise RuntimeError(f"{shlex.join(cmd[:4])} ... exited with {proc.returncode}; log {log_path}:\n{tail}")


def results_table(spec, results):
    """A Markdown table in the form of the paper's Table 1, best value per metric in bold."""
    points = expand_points(spec)
    columns = [k for k in dict.fromkeys(k for p in points for k in p) if k != "config"]
    if "label" in columns:  # labelled rows: the label says it all
        columns = ["label"]
    rows = []
    for overrides in points:
        record = results.get(point_key(overrides))
        metrics = (record or {}).get("metrics") if (record or {}).get("status") == "ok" else None
        rows.append((overrides, metrics, (record or {}).get("status", "pending")))
    present = [name for name, _ in METRICS
               if any(m and _METRIC_KEYS[name] in m for _, m, _ in rows)]
    best = {}
    for name, direction in METRICS:
        values = [m[_METRIC_KEYS[name]] for _, m, _ in rows if m and _METRIC_KEYS[name] in m]
        if values:
            best[name] = min(values) if direction == "min" else max(values)
    arrows = {name: "↓" if direction == "min" else "↑" for name, direction in METRICS}
    header = columns + [f"{name}{arrows[name]}" for name in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for overrides, metrics, status in rows:
        cells = [_format_value(overrides.get(c, "")) for c in columns]
        for name in present:
            if not metrics:
                cells.append(status)
                continue
            value = metrics[_METRIC_KEYS[name]]
            text = f"{value:.2f}" if name in ("FID", "sFID", "IS") else f"{value:.3f}"
            cells.append(f"**{text}**" if value == best.get(name) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_value(value):
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def plot_results(spec, results, folder):
    """One PNG per metric against the first swept key (a line per value of the second, if any)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    points = [p for p in expand_points(spec) if results.get(point_key(p), {}).get("status") == "ok"]
    keys = [k for k in dict.fromkeys(k for p in points for k in p) if k != "config"]
    if not keys:
        return []
    x_key, series_key = keys[0], (keys[1] if len(keys) > 1 else None)
    written = []
    for name, direction in METRICS:
        metric = _METRIC_KEYS[name]
        series = {}
        for p in points:
            metrics = results[point_key(p)]["metrics"]
            if metric in metrics:
                label = _format_value(p.get(series_key, "")) if series_key else name
                series.setdefault(label, []).append((p.get(x_key), metrics[metric]))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for label, values in series.items():
            xs = [_format_value(x) if isinstance(x, list) else x for x, _ in values]
            ax.plot(xs, [y for _, y in values], marker="o", label=label)
        ax.set_xlabel(x_key)
        ax.set_ylabel(f"{name} ({'lower' if direction == 'min' else 'higher'} is better)")
        if series_key:
            ax.legend(title=series_key, fontsize="small")
        fig.tight_layout()
        path = Path(folder) / f"{spec['name']}_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written

"""Config-driven sweeps: expand a grid of overrides, sample and evaluate each point, tabulate the results.

A sweep spec (YAML):

    name: pag_scale
    base: configs/table1/adm256_uncond_pag.yaml     # sampling config (flag names as keys; `include:` works)
    reference: VIRTUAL_imagenet256_labeled.npz      # evaluator reference batch
    evaluator_args: []                              # extra evaluator flags, e.g. [--backend, digits]
    output_dir: runs/pag_scale                      # point folders and results.jsonl go here
    points:                                         # an explicit list of points ...
      - {pag_scale: 0.0}
    grid:                                           # ... and/or every combination (lists of values)
      pag_scale: [1.0, 2.0, 3.0, 4.0]
    launch: "mpiexec -n 8"                          # optional prefix of the sampling command
    prepare_reference: [python, -m, guided_diffusion.data.digits, --split, heldout, --out, "{reference}"]
                                                    # optional: makes the reference batch when it is missing
    baseline: {pag_scale: 0.0}                      # optional: the row every other row is compared with
                                                    # (its overrides or its label; default: the first row)
    intervals: 1000                                 # optional: bootstrap resamples (0: no intervals and no
                                                    # comparisons); seed_sets: 5, bootstrap_seed: 0

The spec is checked before anything runs (guided_diffusion/experiments/sweep_spec.py): an unknown key, a
value of the wrong type, or a flag name or value the sampler would refuse in any point is an error naming
the point, with the closest known name. The rows are the explicit `points` first, then the grid's
combinations, whatever their order in the file; the default baseline is the first row.

Commands run from the repository root, so paths inside sampling configs (model_path) are relative to it.
Each point is keyed by its overrides; `results.jsonl` holds one line per finished or failed point, and a
rerun skips the points already done. A finished point whose files now give other settings than those it ran
with (its `config.yaml`: e.g. a method file's scale was retuned) is an error before anything runs, not a
silent reuse of old results. Relative paths in a spec are relative to the
repository root. A point may carry a `label` (not a flag) that names its row in the table, and a
`config` (a config file, or a list of them) that replaces `base` for that point, so that a sweep can run
the rows of a table from their own files:

    points:
      - {label: "uncond ADM", config: configs/table1/adm256_uncond_unguided.yaml}
      - {label: "uncond + PAG", config: configs/table1/adm256_uncond_pag.yaml}

Every point is evaluated with bootstrap intervals, and every finished point is compared with the baseline
point on the same seeds (`python -m evaluations.evaluator REF BASELINE.npz --compare POINT.npz`, written to
the point's `compare.json`). Both are runs of adm-evaluate, the command line of the one scorer
(evaluations.scoring.Scorer, which the demo and pag-checkpoint-quality use in-process). The sweep runs it as a
command, as it runs the sampler: a stop signal reaches it at once (scoring 50,000 images takes minutes), the
feature network's TensorFlow and GPU memory leave with it before the next point samples, and `--dry_run`
prints the same commands to submit as jobs; the activation cache spares the repeated featurising.

The table shows each value with its interval and, below, each row's paired difference from the baseline; a
difference is bold only when its interval excludes zero, and no value is marked as the best.

Run from `scripts/sweep.py`, a SIGTERM or SIGINT is passed on to the running command, which the sweep waits
for (guided_diffusion/experiments/child_signals.py); the interrupted point is not recorded, so a rerun
continues it.
"""

import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from guided_diffusion.diffusion.factory import model_and_diffusion_defaults
from guided_diffusion.experiments.child_signals import StopSignals
from guided_diffusion.experiments.sweep_spec import (
    REPO_ROOT,
    STATISTICS_DEFAULTS,
    baseline_for,
    baseline_point,
    baseline_rule,
    check_point_flags,
    comparison_specs,
    describe_point,
    expand_points,
    load_spec,
    point_config,
    point_key,
)
from guided_diffusion.runtime.files import append_line, atomic_write_text, file_identity
from guided_diffusion.sampling.run import SAMPLE_FLAGS
from guided_diffusion.sampling.shard_timing import LOW_CPU_SHARE, sampling_time
from guided_diffusion.sampling.store import batch_name

__all__ = ["load_spec", "check_point_flags", "expand_points", "baseline_point", "point_config", "point_key",
           "read_results", "changed_settings", "finished_points", "point_commands", "scoring_command",
           "scoring_options", "planned_commands", "run_sweep", "run_comparisons", "run_all_comparisons",
           "in_feature_space", "rescore_points", "results_table", "plot_results", "metric_figure"]

log = logging.getLogger(__name__)
REPLICATES_FOLDER = "bootstrap_replicates"  # in the sweep's folder: each batch's bootstrap replicates, reused
_CACHE_FLAG = "--bootstrap_cache"

METRICS = (("FID", "min"), ("sFID", "min"), ("KID", "min"), ("IS", "max"), ("Precision", "max"),
           ("Recall", "max"))
_METRIC_KEYS = {"FID": "fid", "sFID": "sfid", "KID": "kid", "IS": "inception_score", "Precision": "precision",
                "Recall": "recall"}


def read_results(path):
    results = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                results[record["key"]] = record
    return results


def point_commands(spec, overrides, point_dir):
    """(sampling command, evaluation command, samples path) for one point; writes the point's config."""
    config = point_config(spec, overrides)
    point_dir.mkdir(parents=True, exist_ok=True)
    config_path = point_dir / "config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=True))
    launch = shlex.split(spec.get("launch", ""))
    sample = launch + [sys.executable, "-m", "scripts.image_sample", "--config", str(config_path),
                       "--output_dir", str(point_dir / "samples")]
    size = config.get("image_size", model_and_diffusion_defaults()["image_size"])
    num_samples = config.get("num_samples", SAMPLE_FLAGS.defaults()["num_samples"])  # fixes the file name
    samples = point_dir / "samples" / (batch_name(num_samples, (size, size, 3)) + ".npz")
    return sample, scoring_command(spec, samples, point_dir / "metrics.json"), samples


def scoring_command(spec, samples, json_path, baseline_samples=None):
    """The adm-evaluate command (evaluations.scoring.Scorer) that scores `samples` against the spec's reference,
    or with `baseline_samples` compares them with the baseline's on the same seeds; its JSON goes to
    `json_path`. With intervals, every batch's bootstrap replicates are kept in the sweep's folder
    (`REPLICATES_FOLDER`): a point is resampled once for its own intervals and reused by each comparison."""
    compare = baseline_samples is not None
    batches = [str(baseline_samples), "--compare", str(samples)] if compare else [str(samples)]
    cache = [_CACHE_FLAG, str(Path(spec["output_dir"]) / REPLICATES_FOLDER)] if _intervals(spec) else []
    return ([sys.executable, "-m", "evaluations.evaluator", spec["reference"], *batches, "--json", str(json_path)]
            + scoring_options(spec, compare) + cache)


def scoring_options(spec, compare):
    """The evaluator options that a score's result depends on: the statistics settings and the spec's
    `evaluator_args`; not the file paths or the replicate cache, which changes only how fast it comes."""
    options = []
    if _intervals(spec):
        options += ["--intervals", str(_intervals(spec)),
                    "--bootstrap_seed", str(spec.get("bootstrap_seed", STATISTICS_DEFAULTS["bootstrap_seed"]))]
        if compare:
            options += ["--seed_sets", str(spec.get("seed_sets", STATISTICS_DEFAULTS["seed_sets"]))]
    return options + [str(a) for a in spec.get("evaluator_args", [])]


def _intervals(spec):
    return spec.get("intervals", STATISTICS_DEFAULTS["intervals"])


def _score_stamp(spec, samples, baseline_samples=None):
    """What the score `scoring_command` makes of the same arguments is made from: its scoring options and the
    reference's and batches' contents (their identities, so that the same files under another spelling of the
    output folder still match)."""
    compare = baseline_samples is not None
    batches = {"a": baseline_samples, "b": samples} if compare else {"samples": samples}
    return {"command": scoring_options(spec, compare), "reference": file_identity(spec["reference"]),
            **{name: file_identity(path) for name, path in batches.items()}}


def run_comparisons(spec, results, env=None, name="compare"):
    """Compare every finished point with its baseline point; return {key: comparison}.

    A comparison is reused while the two sample files and the statistics settings are unchanged. Each is
    written to the point's `<name>.json` (another name keeps, e.g., another feature backend's apart)."""
    if not _intervals(spec):
        return {}
    out = Path(spec["output_dir"])
    comparisons = {}
    for overrides in expand_points(spec):
        key = point_key(overrides)
        base = baseline_for(spec, overrides)
        base_key = point_key(base)
        record, base_record = results.get(key) or {}, results.get(base_key) or {}
        if key == base_key:
            continue
        if record.get("status") != "ok" or base_record.get("status") != "ok":
            continue
        result_path = out / key / f"{name}.json"
        command = scoring_command(spec, record["samples"], result_path, base_record["samples"])
        stamp = _score_stamp(spec, record["samples"], base_record["samples"])
        note = ("comparing %s with the baseline %s", json.dumps(overrides, sort_keys=True),
                json.dumps(base, sort_keys=True))
        try:
            comparisons[key] = _stamped_run(command, result_path, stamp, out / key / f"{name}.log", env, note)
        except Exception as error:  # a failed comparison leaves the rest of the table intact
            comparisons[key] = {"status": "failed", "error": str(error)[-2000:]}
            log.warning("    comparison failed: %s", _last_line(error))
    return comparisons


def _stamped_run(command, result_path, stamp, log_path, env, note):
    """The JSON that `command` writes to `result_path`, run (logging `note`) only when that file is missing or
    its `.key.json` stamp says another command or other inputs made it: reruns reuse finished scores."""
    stamp_path = result_path.with_name(result_path.stem + ".key.json")
    if result_path.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return json.loads(result_path.read_text())
    log.info(*note)
    _run(command, log_path, env)
    result = json.loads(result_path.read_text())
    atomic_write_text(stamp_path, json.dumps(stamp, sort_keys=True))
    return result


def run_all_comparisons(spec, results, env=None):
    """[(spec with one baseline, {key: comparison})] for the baseline and each `also_compare_with` entry."""
    suffix = spec.get("file_suffix", "")
    return [(one, run_comparisons(one, results, env=env, name=name + suffix)) for one, name in comparison_specs(spec)]


def in_feature_space(spec, backend):
    """The spec scored by the evaluator backend `backend` instead of its own: the same samples, and files with
    the suffix `_<backend>` (metrics_<backend>.json, compare_<backend>.json, table_<backend>.md), so that a
    second feature network's verdict sits beside the first's."""
    args = [str(a) for a in spec.get("evaluator_args", [])]
    if "--backend" in args:
        index = args.index("--backend")
        args = args[:index] + args[index + 2:]
    return {**spec, "evaluator_args": args + ["--backend", backend], "file_suffix": f"_{backend}"}


def rescore_points(spec, results, env=None):
    """Score every finished point's stored samples with the spec's evaluator settings (e.g. another feature
    space, `in_feature_space`) into `metrics<suffix>.json`; returns the results with those metrics. A score is
    reused while the sample file and the settings are unchanged; nothing is sampled."""
    out, suffix = Path(spec["output_dir"]), spec.get("file_suffix", "")
    rescored = {}
    for key, record in results.items():
        if record.get("status") != "ok":
            rescored[key] = record
            continue
        result_path = out / key / f"metrics{suffix}.json"
        command = scoring_command(spec, record["samples"], result_path)
        stamp = _score_stamp(spec, record["samples"])
        options = " ".join(scoring_options(spec, False))
        note = ("scoring %s (%s)", json.dumps(record["overrides"], sort_keys=True), options)
        try:
            metrics = _stamped_run(command, result_path, stamp, out / key / f"evaluate{suffix}.log", env, note)
            rescored[key] = {**record, "metrics": metrics}
        except Exception as error:  # one failed score leaves the rest of the table intact
            rescored[key] = {**record, "status": "failed", "error": str(error)[-2000:]}
            log.warning("    scoring failed: %s", _last_line(error))
    return rescored


def changed_settings(spec, overrides, point_dir):
    """{flag: (then, now)} for each setting a finished point ran with (its stored config.yaml) that its files and
    overrides now set otherwise; empty when nothing changed or the point never wrote a config."""
    stored = Path(point_dir) / "config.yaml"
    if not stored.exists():
        return {}
    then = yaml.safe_load(stored.read_text()) or {}
    now = yaml.safe_load(yaml.safe_dump(point_config(spec, overrides), sort_keys=True))  # the same YAML types
    keys = (set(then) | set(now)) - {"output_dir"}  # the sweep chooses where samples go; not a setting
    return {k: (then.get(k), now.get(k)) for k in sorted(keys) if then.get(k) != now.get(k)}


def finished_points(spec):
    """The keys of the points recorded as done; ValueError when any of them ran with other settings than its
    files now give (its results would be reused as if they were current)."""
    out = Path(spec["output_dir"])
    done = {k for k, r in read_results(out / "results.jsonl").items() if r["status"] == "ok"}
    stale = []
    for overrides in expand_points(spec):
        key = point_key(overrides)
        changes = changed_settings(spec, overrides, out / key) if key in done else {}
        if changes:
            listed = "; ".join(f"{k}: {then!r} then, {now!r} now" for k, (then, now) in changes.items())
            stale.append(f"point {describe_point(overrides)} ({out / key}): {listed}")
    if stale:
        raise ValueError(
            f"sweep {spec.get('name', '')!r}: {len(stale)} finished point(s) in {out} ran with settings that their "
            "config files no longer give, so their results are not this spec's:\n  " + "\n  ".join(stale)
            + "\nRun the spec into a fresh folder (--output_dir), or restore the files it ran with.")
    return done


def planned_commands(spec):
    """The shell commands a run would start: each pending point's sampling and evaluation, then each
    comparison with the baseline (to submit after the points' own jobs). Writes the points' configs.
    Every point's flags are checked first, as the sampler will check them (ValueError)."""
    check_point_flags(spec)
    out = Path(spec["output_dir"])
    done = finished_points(spec)
    points = expand_points(spec)
    commands = []
    for overrides in points:
        if point_key(overrides) not in done:
            commands += point_commands(spec, overrides, out / point_key(overrides))[:2]
    for one, name in comparison_specs(spec) if _intervals(spec) else ():
        for overrides in points:
            base = baseline_for(one, overrides)
            if point_key(overrides) != point_key(base):
                base_samples, samples = [point_commands(spec, p, out / point_key(p))[2] for p in (base, overrides)]
                commands.append(scoring_command(spec, samples, out / point_key(overrides) / f"{name}.json",
                                                base_samples))
    return [shlex.join(command) for command in commands]


def run_sweep(spec, env=None):
    """Run every pending point; return {key: record}. Every point's flags are checked before the first runs."""
    check_point_flags(spec)
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    if spec.get("prepare_reference") and not Path(spec["reference"]).exists():
        command = [sys.executable if c == "python" else str(c).replace("{reference}", spec["reference"])
                   for c in spec["prepare_reference"]]
        _run(command, out / "prepare_reference.log", env)
    done = finished_points(spec)
    points = expand_points(spec)
    for index, overrides in enumerate(points):
        key = point_key(overrides)
        label = json.dumps(overrides, sort_keys=True)
        if key in done:
            log.info("[%d/%d] %s: done, skipped", index + 1, len(points), label)
            continue
        point_dir = out / key
        sample_cmd, eval_cmd, samples = point_commands(spec, overrides, point_dir)
        log.info("[%d/%d] %s: sampling and evaluating in %s", index + 1, len(points), label, point_dir)
        start = time.time()
        record = {"key": key, "overrides": overrides}
        try:
            _run(sample_cmd, point_dir / "sample.log", env)
            images = point_config(spec, overrides).get("num_samples", SAMPLE_FLAGS.defaults()["num_samples"])
            # The sampler's own time, recorded in its shards: right also where other jobs or machines sampled
            # them and this command only assembled; else (an older version's shards) the command's wall time.
            record.update(sampling_record(sampling_time(Path(samples).parent, images), time.time() - start))
            _run(eval_cmd, point_dir / "evaluate.log", env)
            metrics = json.loads((point_dir / "metrics.json").read_text())
            record.update(status="ok", metrics=metrics, samples=str(samples), num_samples=images)
        except Exception as error:  # one failed point must not stop the sweep
            record.update(status="failed", error=str(error)[-2000:])
            log.warning("    failed: %s", _last_line(error))
        record["seconds"] = round(time.time() - start, 1)
        append_line(results_path, json.dumps(record, sort_keys=True))
    return read_results(results_path)


def sampling_record(timed, wall_seconds):
    """A point's `sample_seconds` (and `cpu_share`, sampled on the CPU) from its shards' SamplingTime, or the
    command's wall time where the shards do not record it; warns where other work shared the CPU cores."""
    if timed is None:
        return {"sample_seconds": round(wall_seconds, 1)}
    record = {"sample_seconds": round(timed.seconds, 1)}
    if timed.cpu_share is not None:
        record["cpu_share"] = round(timed.cpu_share, 2)
        if timed.shared_shards:
            names = ", ".join(timed.shared_shards[:4]) + (", ..." if len(timed.shared_shards) > 4 else "")
            log.warning("    sampled with %.0f%% of its threads' CPU time; %d shard(s) got under %.0f%% (%s): other "
                        "work shared the cores, so the row's s/image overstates its cost (its images are as good as "
                        "any; sample the row again alone for a clean time)", 100 * timed.cpu_share,
                        len(timed.shared_shards), 100 * LOW_CPU_SHARE, names)
    return record


def _last_line(error):
    return str(error).splitlines()[-1] if str(error) else type(error).__name__


def _run(cmd, log_path, env):
    """Run one command to its end, its output in `log_path`. Under StopSignals (the sweep's command line), a
    stop signal is passed on to the command, which is waited for, and raises Interrupted."""
    with open(log_path, "w") as log_file:
        options = dict(stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        stop = StopSignals.active
        status = stop.run(cmd, **options) if stop else subprocess.run(cmd, **options).returncode
    if status != 0:
        tail = Path(log_path).read_text()[-1500:]
        raise RuntimeError(f"{shlex.join(cmd[:4])} ... exited with {status}; log {log_path}:\n{tail}")


def results_table(spec, results, comparisons=None, also=()):
    """Markdown: each point's metrics with their 95% intervals (and sampling seconds per image, where timed,
    with the share of its threads' CPU time where it sampled on the CPU), then each point's paired difference
    from the baseline point (bold where the interval excludes zero; (w/K): seed sets where the row does
    better), then from each further baseline in `also` ([(spec, comparisons)])."""
    from evaluations.tables import values_table

    columns, rows = _table_rows(spec, results)
    records = [results.get(point_key(p)) or {} for p in expand_points(spec)]
    timing = [("s/image", _seconds_per_image)] if any("sample_seconds" in r for r in records) else []
    if any("cpu_share" in r for r in records):  # sampled on the CPU: how much of its cores each row had
        timing.append(("CPU share", lambda r: f"{r['cpu_share']:.2f}" if "cpu_share" in r else ""))
    timed_rows = [(cells + [cell(r) for _, cell in timing], m, status) for (cells, m, status), r in zip(rows, records)]
    table = values_table(columns + [name for name, _ in timing], timed_rows)
    for one, found in ([(spec, comparisons)] if comparisons else []) + list(also):
        table += _differences_section(one, columns, rows, found)
    return table


def _seconds_per_image(record):
    if "sample_seconds" not in record or not record.get("num_samples"):
        return ""
    return f"{record['sample_seconds'] / record['num_samples']:.3f}"


def _table_rows(spec, results):
    points = expand_points(spec)
    # the config files show (by name) only when they tell rows apart
    varied_config = len({json.dumps(p.get("config")) for p in points}) > 1
    columns = [k for k in dict.fromkeys(k for p in points for k in p) if k != "config" or varied_config]
    if "label" in columns:  # labelled rows: the label says it all
        columns = ["label"]
    rows = []
    for overrides in points:
        record = results.get(point_key(overrides)) or {}
        metrics = record.get("metrics") if record.get("status") == "ok" else None
        cells = [_config_names(overrides) if c == "config" else _format_value(overrides.get(c, "")) for c in columns]
        rows.append((cells, metrics, record.get("status", "pending")))
    return columns, rows


def _differences_section(spec, columns, rows, comparisons):
    from evaluations.tables import differences_table

    points = expand_points(spec)
    base = spec["baseline"] if spec.get("pair_by") else baseline_point(spec)
    base_text = base.get("label") or ", ".join(f"{k}={_format_value(v)}" for k, v in base.items() if k != "config")
    diff_rows = []
    for overrides, (cells, _, status) in zip(points, rows):
        if point_key(overrides) == point_key(baseline_for(spec, overrides)):
            continue
        comparison = comparisons.get(point_key(overrides))
        if status == "ok":
            status = "not compared" if comparison is None else "comparison failed"
        if comparison is not None and comparison.get("status") == "failed":
            comparison = None
        diff_rows.append((cells, comparison, status))
    sets = spec.get("seed_sets", STATISTICS_DEFAULTS["seed_sets"])
    caption = (f"\nDifference from the baseline ({base_text}; {baseline_rule(spec)}) on the same seeds: row − "
               "baseline [paired 95% "
               f"interval]; **bold**: the interval excludes 0; (w/{sets}): of {sets} disjoint seed sets, those where "
               "the row is better.\n\n")
    return caption + differences_table(columns, diff_rows)


def _config_names(point):
    files = point.get("config") or []
    return " ".join(Path(f).stem for f in ([files] if isinstance(files, str) else files))


def _format_value(value):
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def plot_results(spec, results, folder):
    """One PNG per metric against the first swept key (a series per value of the second, if any; see
    `metric_figure` for numeric keys against labels)."""
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
            if metrics.get(metric) is not None:
                label = _format_value(p.get(series_key, "")) if series_key else name
                interval = (metrics.get("intervals") or {}).get(metric) or [metrics[metric]] * 2
                series.setdefault(label, []).append((p.get(x_key), metrics[metric], interval))
        if not series:
            continue
        fig = metric_figure(series, x_key, f"{name} ({'lower' if direction == 'min' else 'higher'} is better; "
                                           "95% intervals)", series_key)
        path = Path(folder) / f"{spec['name']}_{metric}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def metric_figure(series, x_key, metric_label, series_key=None):
    """A metric with its intervals per point: {series label: [(x, value, (lo, hi))]}.

    Numeric x (a scale) is a line over x. Anything else (labels such as "CFG + PAG") are categories with no
    order between them: one row each, the label on the y axis, so long labels never overlap and no line joins
    unrelated methods.
    """
    import matplotlib.pyplot as plt

    xs = [x for values in series.values() for x, _, _ in values]
    categorical = any(isinstance(x, (str, list, bool)) or x is None for x in xs)
    categories = list(dict.fromkeys(_format_value(x) for x in xs)) if categorical else []
    size = (5.5, 1.0 + 0.35 * len(categories)) if categorical else (4.5, 3.2)
    fig, ax = plt.subplots(figsize=size)
    for label, values in series.items():
        ys = [y for _, y, _ in values]
        errors = [[max(y - lo, 0) for _, y, (lo, _) in values], [max(hi - y, 0) for _, y, (_, hi) in values]]
        if categorical:
            rows = [categories.index(_format_value(x)) for x, _, _ in values]
            ax.errorbar(ys, rows, xerr=errors, marker="o", linestyle="none", capsize=3, label=label)
        else:
            ax.errorbar([x for x, _, _ in values], ys, yerr=errors, marker="o", capsize=3, label=label)
    if categorical:
        ax.set_yticks(range(len(categories)), categories)
        ax.set_ylim(len(categories) - 0.5, -0.5)  # the sweep's order, top to bottom
        ax.set_ylabel(x_key)
        ax.set_xlabel(metric_label)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric_label)
    if series_key:
        ax.legend(title=series_key, fontsize="small")
    fig.tight_layout()
    return fig

"""Run a sweep spec: sample and evaluate every point, compare each with the baseline point on the same seeds,
then write a Table-1-style table (values with 95% intervals, paired differences from the baseline) and plots.

    python -m scripts.sweep configs/sweeps/digits/pag_scale_layers.yaml       # run locally, point after point
    python -m scripts.sweep configs/sweeps/imagenet256/pag_scale.yaml --dry_run
                                # print each point's commands instead (to submit with mpiexec/torchrun/sbatch)
Reruns skip finished points; failed points are recorded and retried on the next run. The spec, and every
point's flags, are checked before anything runs. SIGTERM or SIGINT (Ctrl-C) stops the running command and
the sweep (exit status 143 / 130); a rerun continues.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from guided_diffusion.cli.flags import Flag, FlagGroup, HelpFormatter
from guided_diffusion.experiments.child_signals import run_until_stopped
from guided_diffusion.experiments.sweep import (
    check_point_flags,
    finished_points,
    in_feature_space,
    load_spec,
    planned_commands,
    plot_results,
    read_results,
    rescore_points,
    results_table,
    run_all_comparisons,
    run_sweep,
)
from guided_diffusion.experiments.sweep_flags import BACKEND, OUTPUT_DIR
from guided_diffusion.runtime.files import atomic_write_text
from guided_diffusion.runtime.logs import log_to_console, stop_logging

log = logging.getLogger("scripts.sweep")

SWEEP_FLAGS = FlagGroup("sweep", [
    Flag("dry_run", False, "print the sampling, scoring and comparison commands of the pending points (to submit "
                           "as jobs) and run nothing", switch=True),
    OUTPUT_DIR,
    BACKEND,
])


def create_argparser():
    # The spec is the sweep's one config file: no --config flag beside it.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("spec", help="sweep spec YAML (see guided_diffusion/experiments/sweep.py)")
    SWEEP_FLAGS.add_to(parser)
    return parser


def main(argv=None):
    args = create_argparser().parse_args(argv)

    log_to_console()
    try:
        return run_until_stopped(lambda: _sweep(args), log, "sweep")
    finally:
        stop_logging()


def _sweep(args):
    try:  # a bad spec, a flag the sampler would refuse in any point, or a finished point whose files changed:
        spec = load_spec(args.spec)  # one message, before anything runs
        if args.output_dir:
            spec["output_dir"] = args.output_dir
        check_point_flags(spec)
        finished_points(spec)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.dry_run:
        try:
            for command in planned_commands(spec):
                print(command)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`--dry_run | head`): nothing more is wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # keeps the exit flush quiet
        return 0
    out = Path(spec["output_dir"])
    if args.backend:  # another feature network's view of the same samples
        spec = in_feature_space(spec, args.backend)
        results = rescore_points(spec, read_results(out / "results.jsonl"))
        if not any(r["status"] == "ok" for r in results.values()):
            raise SystemExit(f"error: no finished points in {out} to score: run the sweep without --backend first")
    else:
        results = run_sweep(spec)
    (main_spec, comparisons), *also = run_all_comparisons(spec, results)
    table = results_table(main_spec, results, comparisons, also)
    table_path = out / f"table{spec.get('file_suffix', '')}.md"
    atomic_write_text(table_path, table)
    plots = [] if args.backend else plot_results(spec, results, out)
    print(table)
    print(f"table: {table_path}" + (f"; plots: {', '.join(str(p) for p in plots)}" if plots else ""))
    failed = [r for r in results.values() if r["status"] == "failed"]
    failed += [c for _, found in [(main_spec, comparisons), *also] for c in found.values()
               if c.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

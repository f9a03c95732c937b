"""Run a sweep spec: sample and evaluate every point, compare each with the baseline point on the same seeds,
then write a Table-1-style table (values with 95% intervals, paired differences from the baseline) and plots.

    python -m scripts.sweep configs/sweeps/digits/pag_scale_layers.yaml       # run locally, point after point
    python -m scripts.sweep configs/sweeps/imagenet256/pag_scale.yaml --dry_run
                                # print each point's commands instead (to submit with mpiexec/torchrun/sbatch)
Reruns skip finished points; failed points are recorded and retried on the next run.
"""

import argparse
from pathlib import Path

from guided_diffusion.experiments.sweep import (
    load_spec,
    planned_commands,
    plot_results,
    results_table,
    run_comparisons,
    run_sweep,
)
from guided_diffusion.runtime.files import atomic_write_text
from guided_diffusion.runtime.logs import log_to_console, stop_logging


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="sweep spec YAML (see guided_diffusion/experiments/sweep.py)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands of pending points, run nothing")
    parser.add_argument("--output_dir", help="override the spec's output_dir")
    args = parser.parse_args(argv)

    spec = load_spec(args.spec)
    if args.output_dir:
        spec["output_dir"] = args.output_dir
    if args.dry_run:
        for command in planned_commands(spec):
            print(command)
        return 0
    log_to_console()
    try:
        results = run_sweep(spec)
        comparisons = run_comparisons(spec, results)
    finally:
        stop_logging()
    table = results_table(spec, results, comparisons)
    out = Path(spec["output_dir"])
    atomic_write_text(out / "table.md", table)
    plots = plot_results(spec, results, out)
    print(table)
    print(f"table: {out / 'table.md'}" + (f"; plots: {', '.join(str(p) for p in plots)}" if plots else ""))
    failed = [r for r in results.values() if r["status"] == "failed"]
    failed += [c for c in comparisons.values() if c.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

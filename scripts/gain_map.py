"""Draw a guidance method's gain map from a paired sweep: ΔFID against the unguided FID per checkpoint, sampler
and scale, as a table (map.md) and a plot (map.png) in the sweep's folder.

    python -m scripts.sweep configs/sweeps/fashion32/pag_gain_map.yaml       # first: sample, score, compare
    python -m scripts.gain_map configs/sweeps/fashion32/pag_gain_map.yaml    # then: the map
    python -m scripts.gain_map configs/sweeps/fashion32/pag_gain_map.yaml --backend fashion_resnet
                                        # the same samples compared in another feature space (map_fashion_resnet.*)

The spec needs `pair_by` and a `baseline` of overrides (each guided point against the unguided point of its
checkpoint and sampler). Comparisons the sweep has made are reused; missing ones (e.g. in another feature
space) are made here, from the stored samples. SIGTERM or SIGINT (Ctrl-C) stops the running comparison and
the program (exit status 143 / 130), as in pag-sweep; a rerun reuses the finished comparisons.
"""

import argparse
import importlib.util
import logging
from pathlib import Path

from guided_diffusion.cli.flags import Flag, FlagGroup, HelpFormatter
from guided_diffusion.experiments.child_signals import run_until_stopped
from guided_diffusion.experiments.gain_map import map_rows, map_table, plot_gain_map
from guided_diffusion.experiments.sweep import in_feature_space, load_spec, read_results, run_comparisons
from guided_diffusion.experiments.sweep_flags import BACKEND, OUTPUT_DIR
from guided_diffusion.runtime.files import atomic_write_text
from guided_diffusion.runtime.logs import log_to_console, stop_logging

log = logging.getLogger("scripts.gain_map")

MAP_FLAGS = FlagGroup("gain map", [
    OUTPUT_DIR.but(help="the sweep's folder, in place of the spec's output_dir (default: the spec's)"),
    BACKEND.but(help="compare the stored samples in this evaluator feature space instead of the spec's (e.g. "
                     "fashion_resnet); files get the suffix _BACKEND"),
    Flag("scale_flag", None, "the flag that holds the guidance scale (default: the key of the spec's baseline, "
                             "e.g. pag_scale)"),
])


def create_argparser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("spec", help="the sweep spec YAML (with pair_by and a baseline of overrides)")
    MAP_FLAGS.add_to(parser)
    return parser


def main(argv=None):
    args = create_argparser().parse_args(argv)
    log_to_console()
    try:
        return run_until_stopped(lambda: _gain_map(args), log, "pag-gain-map")
    finally:
        stop_logging()


def _gain_map(args):
    if importlib.util.find_spec("matplotlib") is None:  # before any comparison is computed
        raise SystemExit("error: pag-gain-map draws its plot with matplotlib: pip install 'pag-adm[plots]'")
    try:
        spec = load_spec(args.spec)
        if not spec.get("pair_by") or not isinstance(spec.get("baseline"), dict):
            raise ValueError(f"{args.spec} is not a paired sweep: a gain map needs 'pair_by' (e.g. [model_path, "
                             "config]) and a 'baseline' of overrides (e.g. {pag_scale: 0.0})")
        scale_flag = args.scale_flag or _only_key(spec["baseline"])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.output_dir:
        spec["output_dir"] = args.output_dir
    if args.backend:
        spec = in_feature_space(spec, args.backend)
    suffix = spec.get("file_suffix", "")
    results = read_results(Path(spec["output_dir"]) / "results.jsonl")
    comparisons = run_comparisons(spec, results, name=f"compare{suffix}")
    rows = map_rows(spec, comparisons, scale_flag)
    if not rows:
        raise SystemExit(f"error: no finished comparisons in {spec['output_dir']}: run "
                         f"`python -m scripts.sweep {args.spec}` first")
    out = Path(spec["output_dir"])
    table = map_table(rows)
    atomic_write_text(out / f"map{suffix}.md", table)
    title = "PAG's gain: paired ΔFID against the unguided FID" + (f" ({args.backend} features)" if suffix else "")
    plot_gain_map(rows, out / f"map{suffix}.png", title=title)
    print(table)
    print(f"map: {out / f'map{suffix}.md'}, {out / f'map{suffix}.png'}")
    failed = [c for c in comparisons.values() if c.get("status") == "failed"]
    return 1 if failed else 0


def _only_key(overrides):
    if len(overrides) != 1:
        raise ValueError(f"the baseline {overrides} sets {len(overrides)} flags: name the scale with --scale_flag")
    return next(iter(overrides))


if __name__ == "__main__":
    raise SystemExit(main())

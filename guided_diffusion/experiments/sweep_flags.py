"""The flags that name which sweep folder to read and in which feature space: pag-sweep declares them, and
pag-gain-map reads a finished sweep with the same two (with its own help)."""

from guided_diffusion.cli.flags import Flag

OUTPUT_DIR = Flag("output_dir", None, "folder for the points, results.jsonl, table.md and the plots, in place of "
                                      "the spec's output_dir (default: the spec's)")
BACKEND = Flag("backend", None, "score the finished points' samples in this evaluator feature space instead of the "
                                "spec's (e.g. fashion_resnet), sampling nothing: metrics_BACKEND.json, "
                                "compare_BACKEND.json and table_BACKEND.md beside the first space's files")

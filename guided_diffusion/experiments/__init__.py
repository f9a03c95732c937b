"""Experiments over many sampling runs: sweeps of guidance settings, each run sampled and scored."""

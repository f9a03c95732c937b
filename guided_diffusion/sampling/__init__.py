"""Sampling: sampler steps, the guided denoiser, per-image seeds, resumable runs, sweeps and pictures."""

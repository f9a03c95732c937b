"""Training: the loop, its run folder and metrics log, and the noisy-classifier objective."""

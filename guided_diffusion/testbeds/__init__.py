"""The CPU testbeds' demo (Fashion-MNIST and digits): sample, score and tabulate in minutes."""

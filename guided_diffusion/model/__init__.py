"""The ADM networks: U-Net, attention (with the edits guidance uses), classifier, checkpoints, precision."""

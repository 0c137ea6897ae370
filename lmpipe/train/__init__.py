"""The training loop and what it needs: checkpoints, optimizers, schedules, losses, distributed
setup, tracking and activation probes."""

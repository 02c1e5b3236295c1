"""The training engine: optimizers, schedules, checkpoints and the loop."""

"""Suites as work: the Optuna study as a queue of cells, workers that run them, and launchers that start workers."""

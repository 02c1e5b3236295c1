"""Experiment tracking: MLflow runs of a suite and its cells."""

"""Evaluation protocols (kNN, linear probe, label fractions, fine-tuning) and representation diagnostics."""

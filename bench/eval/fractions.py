"""Label fractions: a fixed, seeded, class-balanced subset of a labeled split (e.g. 1% / 10% protocols)."""

from __future__ import annotations

import torch

from bench.data.balanced import class_counts, first_per_class, round_half_up
from bench.errors import ConfigError


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted CPU indices of ``round(fraction * n_c)`` samples (at least 1) of every class c.

    Samples labelled -1 are never chosen. Each class keeps the first samples of one seeded permutation
    (``bench.data.balanced.first_per_class``), hence subsets of one seed are nested: a smaller fraction picks a
    subset of a larger one. Rounding is half up; fraction 1.0 returns every labeled index.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}; e.g. 0.01 for the 1% protocol")
    return first_per_class(labels, round_half_up(class_counts(labels), fraction).clamp_min(1), seed)

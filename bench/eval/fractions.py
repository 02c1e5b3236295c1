"""Label fractions: a fixed, seeded, class-balanced subset of a labeled split (e.g. 1% / 10% protocols)."""

from __future__ import annotations

import torch

from bench.errors import ConfigError


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted CPU indices of ``round(fraction * n_c)`` samples (at least 1) of every class c.

    Samples labelled -1 are never chosen. Each class keeps the first samples of one seeded permutation
    (a CPU generator, so the subset is the same on every machine), hence subsets of one seed are nested:
    a smaller fraction picks a subset of a larger one. Rounding is half up; fraction 1.0 returns every
    labeled index.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}; e.g. 0.01 for the 1% protocol")
    labels = labels.cpu().long()
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    perm = perm[labels[perm] >= 0]
    by_class = perm[torch.sort(labels[perm], stable=True).indices]
    y = labels[by_class]
    counts = torch.bincount(y)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y.numel()) - first[y]
    quota = torch.floor(counts.double() * fraction + 0.5).long().clamp_min(1)
    return torch.sort(by_class[rank < quota[y]]).values

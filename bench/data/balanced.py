"""Seeded, class-balanced subsets of a labelled split: label fractions, the validation hold-out, the kNN monitor's bank.

One rule draws them all: each class keeps the first ``quota[c]`` of its samples in one seeded CPU permutation,
so a subset is the same on every machine and subsets of one seed are nested (a smaller quota picks a subset of
a larger one). Samples labelled -1 are never chosen.
"""

from __future__ import annotations

import torch


def class_counts(labels: torch.Tensor) -> torch.Tensor:
    """Samples per class (int64, one entry per class up to the largest label); -1 labels are not counted."""
    labels = labels.cpu().long()
    return torch.bincount(labels[labels >= 0])


def round_half_up(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    """``floor(fraction * n_c + 0.5)`` per class, in float64 (so 25 * 0.1 = 2.5 rounds to 3)."""
    return torch.floor(counts.double() * fraction + 0.5).long()


def first_per_class(labels: torch.Tensor, quota: torch.Tensor, seed: int) -> torch.Tensor:
    """Sorted CPU indices of the first ``quota[c]`` samples of each class c in a permutation seeded with ``seed``.

    ``quota`` holds one count per class (as ``class_counts``); a quota above a class's size keeps the whole class.
    """
    labels = labels.cpu().long()
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    perm = perm[labels[perm] >= 0]
    by_class = perm[torch.sort(labels[perm], stable=True).indices]
    y = labels[by_class]
    counts = torch.bincount(y, minlength=quota.numel())
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y.numel()) - first[y]
    return torch.sort(by_class[rank < quota[y]]).values


def hold_out(labels: torch.Tensor, *, fraction: float, per_class: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) sorted CPU indices: ``held`` takes ``min(per_class, n_c - 1)`` samples of each class c, or
    ``min(max(1, round_half_up(fraction * n_c)), n_c - 1)`` when ``per_class`` is None; ``kept`` is every other
    index (unlabelled ones included). As in DINOv3's hold-out, every class with two samples or more has one in
    ``held`` at least, and a class with a single sample stays whole in ``kept``."""
    counts = class_counts(labels)
    wanted = torch.full_like(counts, per_class) if per_class is not None else round_half_up(counts, fraction).clamp_min(1)
    held = first_per_class(labels, torch.minimum(wanted, (counts - 1).clamp_min(0)), seed)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held

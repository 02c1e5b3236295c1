"""Batches of uint8 images on the device, from an in-memory ImageSet or a streamed FolderSet.

In-memory sets are gathered on the device with a seeded permutation (no host round trip);
folder sets go through a DataLoader with pinned memory and non-blocking copies.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from bench.data.base import ImageSet
from bench.data.folder import FolderSet

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images uint8 (B,C,H,W), labels, index


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def iter_batches(
    split: ImageSet | FolderSet,
    batch_size: int,
    device: torch.device,
    *,
    order: torch.Tensor | None = None,
    drop_last: bool = False,
    start: int = 0,
    workers: int = 0,
) -> Iterator[Batch]:
    """Yield batches of the samples in ``order`` (default: all, sequential), skipping the first ``start`` batches."""
    order = torch.arange(len(split)) if order is None else order
    total = num_batches(len(order), batch_size, drop_last)
    if isinstance(split, ImageSet):
        order_dev = order.to(split.images.device)
        for b in range(start, total):
            idx = order_dev[b * batch_size : (b + 1) * batch_size]
            yield split.images[idx].to(device, non_blocking=True), split.labels[idx].to(device), idx.to(device)
        return
    chunks = [order[b * batch_size : (b + 1) * batch_size].tolist() for b in range(start, total)]
    loader = DataLoader(
        split,
        batch_sampler=_FixedBatches(chunks),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for images, labels, idx in loader:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True), idx.to(device)


class _FixedBatches(Sampler[list[int]]):
    def __init__(self, chunks: list[list[int]]):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

"""Batches of uint8 images on the device, from an in-memory ImageSet or a streamed FolderSet.

In-memory sets are gathered on the device with a seeded permutation (no host round trip); the ViewMaker
crops their views there. Folder sets go through a DataLoader whose workers fetch a whole batch at a time:
they read the files, decode them (or hand the bytes to the main process, which decodes JPEGs with nvJPEG
on a CUDA device) and cut fixed-size images from each whole image: a ViewPlan's training views, or the
evaluation images. Pinned memory and non-blocking copies bring them to the device.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bench.data.base import ImageSet
from bench.data.decode import decode_images, read_bytes
from bench.data.folder import CPU, FolderSet
from bench.data.folder_crops import Decode
from bench.data.views import HostViews, ViewPlan

#: images uint8 (B,C,H,W) (or a folder set's views cut on the host), labels, index
Batch = tuple[torch.Tensor | HostViews, torch.Tensor, torch.Tensor]


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
    views: ViewPlan | None = None,
) -> Iterator[Batch]:
    """Yield batches of the samples in ``order`` (default: all, sequential), skipping the first ``start`` batches.

    ``views``: a folder set's batches are then the plan's views cut on the host (HostViews); without it they are
    its evaluation images. An in-memory set ignores it (its images are cropped on the device).
    """
    order = torch.arange(len(split)) if order is None else order
    total = num_batches(len(order), batch_size, drop_last)
    if isinstance(split, ImageSet):
        order_dev = order.to(split.images.device)
        for b in range(start, total):
            idx = order_dev[b * batch_size : (b + 1) * batch_size]
            yield split.images[idx].to(device, non_blocking=True), split.labels[idx].to(device), idx.to(device)
        return
    chunks = [order[b * batch_size : (b + 1) * batch_size].tolist() for b in range(start, total)]
    on_device = device.type == "cuda" and split.decode is Decode.auto
    loader = DataLoader(
        _FolderBatches(split, views, decode=not on_device),
        batch_sampler=_FixedBatches(chunks),
        num_workers=workers,
        collate_fn=_as_fetched,
        pin_memory=device.type == "cuda" and not on_device,
        persistent_workers=False,
    )
    for images, labels, idx in loader:
        if on_device:
            images = _decode_packed(split, images, idx, device, views)
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True), idx.to(device)


def _decode_packed(split: FolderSet, packed: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, device: torch.device,
                   views: ViewPlan | None) -> torch.Tensor | HostViews:
    """A batch the workers left as bytes (see ``_FolderBatches``), decoded on ``device`` and cut there."""
    data, lengths = packed
    index = idx.tolist()
    images = decode_images(list(data.split(lengths.tolist())), device, [split.files[i] for i in index])
    return split.assemble(images, index, views)


class _FolderBatches(Dataset):
    """A folder set as DataLoader workers fetch it: one whole batch per ``__getitems__`` call."""

    def __init__(self, split: FolderSet, views: ViewPlan | None, decode: bool):
        self.split, self.views, self.decode = split, views, decode

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, index: list[int]) -> tuple[torch.Tensor | HostViews | tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The batch's images, labels and indices; with ``decode`` off, the files' bytes instead of the images,
        packed into one tensor with each file's length (one shared-memory block per batch, not one per file)."""
        files = [self.split.files[i] for i in index]
        data = [read_bytes(path) for path in files]
        if self.decode:
            images = self.split.assemble(decode_images(data, CPU, files), index, self.views)
        else:
            images = (torch.cat(data), torch.tensor([len(d) for d in data]))
        return images, self.split.labels[index], torch.tensor(index)


def _as_fetched(batch: tuple) -> tuple:
    """``_FolderBatches`` returns finished batches: nothing to collate."""
    return batch


class _FixedBatches(Sampler[list[int]]):
    def __init__(self, chunks: list[list[int]]):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

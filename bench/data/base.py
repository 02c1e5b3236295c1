"""The in-memory form of a dataset split: uint8 images, integer labels, metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """One split of a dataset, resident in memory (and on the device once moved).

    images: uint8 tensor (N, C, H, W); C is 1 or 3.
    labels: int64 tensor (N,); -1 marks an unlabeled sample (e.g. STL-10 'unlabeled').
    classes: class names, index = label.
    mean, std: per-channel statistics in [0, 1] used to normalise the images.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def to(self, device: torch.device | str) -> "ImageSet":
        return ImageSet(self.name, self.images.to(device), self.labels.to(device), self.classes, self.mean, self.std, self.meta)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        index = index.to(self.images.device)
        return ImageSet(self.name, self.images[index], self.labels[index], self.classes, self.mean, self.std, self.meta)

    def labeled(self) -> "ImageSet":
        """Only the samples that carry a label."""
        return self.subset(torch.nonzero(self.labels >= 0).flatten())


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, C, H, W) tensor."""
    x = images.float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) tensor to (N, C, size, size), antialiased bilinear, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):
        chunk = images[start : start + 4096].float()
        chunk = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out

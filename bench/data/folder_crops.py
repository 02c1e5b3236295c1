"""The geometry of streamed folder images, cut from the whole decoded image as the ImageNet recipes do.

Training views: torchvision's RandomResizedCrop box (``bench.data.augment.sample_crop_boxes``) drawn from a
generator seeded by (seed, epoch, index, view), then crop + antialiased resize. Evaluation: the shorter side
resized to ``round(S / 0.875)`` and the centre ``S`` x ``S`` cut (Resize 256 + CenterCrop 224 at S = 224).
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from bench.data.augment import sample_crop_boxes
from bench.data.views import ViewPlan

#: evaluation crop of ImageNet-style folders: CenterCrop(224) of Resize(256)
EVAL_CROP = 0.875


class Interpolation(str, Enum):
    """Resampling of folder crops and of the evaluation resize (always antialiased)."""

    bilinear = "bilinear"
    bicubic = "bicubic"  # DINOv2 / MAE

    @property
    def mode(self) -> InterpolationMode:
        return InterpolationMode(self.value)


class Decode(str, Enum):
    """Where JPEGs of a folder are decoded."""

    auto = "auto"  # nvJPEG on the device when batches go to CUDA, else in the DataLoader workers
    cpu = "cpu"  # always in the DataLoader workers


def eval_image(image: torch.Tensor, size: int, crop: float, interpolation: Interpolation) -> torch.Tensor:
    """Resize the shorter side of (C, H, W) ``image`` to ``round(size / crop)`` and cut the centre ``size`` square."""
    resized = TF.resize(image, [round(size / crop)], interpolation=interpolation.mode, antialias=True)
    return TF.center_crop(resized, [size, size])


def view_generator(seed: int, epoch: int, index: int, view: int) -> torch.Generator:
    """A CPU generator that depends on (seed, epoch, index, view) only (hashed by NumPy's SeedSequence)."""
    entropy = [seed % 2**64, epoch, index, view]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def view_boxes(height: int, width: int, plan: ViewPlan, index: int) -> list[list[int]]:
    """The (top, left, h, w) box of every view of sample ``index`` in a ``height`` x ``width`` image."""
    return [
        sample_crop_boxes(1, height, width, spec.scale, spec.ratio, view_generator(plan.seed, plan.epoch, index, v))[0].tolist()
        for v, spec in enumerate(plan.specs)
    ]


def cut_views(image: torch.Tensor, index: int, plan: ViewPlan, interpolation: Interpolation) -> list[torch.Tensor]:
    """Every view of ``plan`` of one (C, H, W) image: its box cropped and resized (antialiased) to the view's size."""
    boxes = view_boxes(image.shape[-2], image.shape[-1], plan, index)
    return [
        TF.resized_crop(image, *box, [size, size], interpolation=interpolation.mode, antialias=True)
        for box, size in zip(boxes, plan.sizes)
    ]

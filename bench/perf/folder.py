"""ImageFolder decode throughput: our folder path against the plain PIL DataLoader, on synthetic ImageNet-like JPEGs.

Both make the same two RandomResizedCrop views (SimCLR's recipe) of every image and bring them to the device
as uint8, with every CPU core as DataLoader workers:
- ours: ``iter_batches`` with the epoch's ViewPlan (workers fetch whole batches; JPEGs are decoded in one
  batch, by nvJPEG on a CUDA device, else by the workers; the views are cut on the host, antialiased);
  on CUDA the workers-decode path is timed too;
- PIL: torchvision's ``RandomResizedCrop`` + ``PILToTensor`` per view on the PIL image, one image per item,
  as an ``ImageFolder`` DataLoader does.
The evaluation images (Resize + CenterCrop) of our path are timed as well. Photometric ops are left out of
both: ours makes them on the device, batched (``scenarios`` times that part).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import replace
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset

from bench.data.folder import FolderSet
from bench.data.folder_crops import Decode
from bench.data.loader import iter_batches
from bench.data.views import ViewMaker, ViewPlan, build_recipe

RECIPE = "simclr"


class FolderSizes(BaseModel):
    """Sizes of the ImageFolder decode section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_images: int = Field(ge=1, description="synthetic JPEGs, each timed pass reads them all")
    batch_size: int = Field(ge=1)
    image_size: int = Field(224, ge=8, description="side of the views and evaluation images")
    repeats: int = Field(3, ge=1, description="timed passes after one warm-up; the median is reported")
    workers: int | None = Field(None, ge=0, description="DataLoader workers of both paths; None: one per CPU core")


QUICK_FOLDER = FolderSizes(n_images=96, batch_size=32)
FULL_FOLDER = FolderSizes(n_images=2048, batch_size=256)

#: ImageNet's typical photo: 500 x 375 (landscape or portrait), JPEG quality 90
SOURCE_SIDES = (500, 375)


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` photo-like JPEGs (smooth colour fields plus grain), half landscape and half portrait."""
    rng = np.random.default_rng(seed)
    long, short = SOURCE_SIDES
    grain = rng.integers(-14, 15, (long + 64, long + 64, 3), dtype=np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        width, height = (long, short) if i % 2 == 0 else (short, long)
        field = Image.fromarray(rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8))
        base = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        dy, dx = rng.integers(0, 64, 2)
        pixels = (base + grain[dy : dy + height, dx : dx + width]).clip(0, 255).astype(np.uint8)
        files.append(folder / f"{i:05d}.JPEG")
        Image.fromarray(pixels).save(files[-1], quality=90)
    return files


class PilCrops(Dataset):
    """One image per item, as ImageFolder reads it (PIL, RGB), each view by torchvision's transforms on PIL."""

    def __init__(self, files: list[Path], plan: ViewPlan):
        self.files = files
        self.views = [T.Compose([T.RandomResizedCrop(size, scale=spec.scale, ratio=spec.ratio), T.PILToTensor()])
                      for spec, size in zip(plan.specs, plan.sizes)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        with Image.open(self.files[i]) as image:
            rgb = image.convert("RGB")
        return [view(rgb) for view in self.views], i


def _images_per_s(passes, n: int, repeats: int, device: torch.device) -> float:
    """Median images/s of ``repeats`` timed calls of ``passes()`` (an iterable of device tensors) after a warm-up."""
    rates = []
    for attempt in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in passes():
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:
            rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure_folder_decode(sizes: FolderSizes, device: torch.device, scratch: Path) -> dict[str, float | int | str]:
    """images/s of our folder path (views, evaluation images) and of the PIL DataLoader; see the module docstring."""
    files = write_jpegs(scratch / "folder-decode", sizes.n_images)
    folder = FolderSet("decode", files, torch.zeros(len(files), dtype=torch.long), ["x"], image_size=sizes.image_size)
    plan = ViewMaker(build_recipe(RECIPE), folder.mean, folder.std, sizes.image_size, clean=False).plan(0, 0)
    workers = sizes.workers if sizes.workers is not None else os.cpu_count() or 1
    n, b = sizes.n_images, sizes.batch_size

    def ours(split: FolderSet, views: ViewPlan | None):
        return lambda: (images for images, _, _ in iter_batches(split, b, device, views=views, workers=workers))

    pil = DataLoader(PilCrops(files, plan), batch_size=b, num_workers=workers, pin_memory=device.type == "cuda")
    figures: dict[str, float | int | str] = {
        "folder.ours_images_per_s": _images_per_s(ours(folder, plan), n, sizes.repeats, device),
        "folder.pil_images_per_s": _images_per_s(
            lambda: ([c.to(device, non_blocking=True) for c in crops] for crops, _ in pil), n, sizes.repeats, device),
        "folder.eval_images_per_s": _images_per_s(ours(folder, None), n, sizes.repeats, device),
    }
    figures["folder.ours_vs_pil"] = figures["folder.ours_images_per_s"] / figures["folder.pil_images_per_s"]
    figures["folder.decode"] = "nvjpeg" if device.type == "cuda" else "host"
    if device.type == "cuda":
        on_workers = replace(folder, decode=Decode.cpu)
        figures["folder.ours_workers_decode_images_per_s"] = _images_per_s(ours(on_workers, plan), n, sizes.repeats, device)
    figures.update({"folder.workers": workers, "folder.n_images": n, "folder.views": len(plan.specs),
                    "folder.source": f"{SOURCE_SIDES[0]}x{SOURCE_SIDES[1]} JPEG q90"})
    return figures

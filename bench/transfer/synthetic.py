"""A seeded synthetic COCO-format detection set: the shapes of :mod:`bench.data.shapes` on noisy backgrounds.

Each image holds 1..``max_objects`` shapes of the ten shape classes, each with its own colour, size, position
and rotation, on a uniform background colour with pixel noise. Shapes never touch (at least one pixel apart), so
every instance mask is exactly the set of pixels painted for that shape.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from bench.data.shapes import CLASSES, hsv_to_rgb, shape_mask
from bench.errors import ConfigError
from bench.transfer.coco import annotation_file

PLACEMENT_ATTEMPTS = 20
CATEGORIES = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES, start=1)]


def generate_coco_shapes(root: Path, *, n_train: int, n_val: int, image_size: int = 64, seed: int = 0, max_objects: int = 3) -> Path:
    """Write the set for these arguments under ``root`` (splits ``train`` and ``val``) and return its folder.

    The folder is named after the arguments and is a pure function of them; when it exists already it is reused
    as is. It is written into a temporary folder and renamed, so a reader never sees a half-written set.
    """
    for name, value, least in (("n_train", n_train, 1), ("n_val", n_val, 1), ("image_size", image_size, 32), ("max_objects", max_objects, 1)):
        if value < least:
            raise ConfigError(f"generate_coco_shapes: {name}={value}, expected at least {least}")
    root = Path(root)
    target = root / f"coco_shapes_{image_size}px_train{n_train}_val{n_val}_objects{max_objects}_seed{seed}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        _write_split(staging, "train", n_train, image_size, max_objects, 2 * seed)
        _write_split(staging, "val", n_val, image_size, max_objects, 2 * seed + 1)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # else another process finished the same set first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _write_split(folder: Path, split: str, n: int, size: int, max_objects: int, seed: int) -> None:
    """PNG images under ``folder/split`` and their instances file under ``folder/annotations``."""
    g = torch.Generator().manual_seed(seed)
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, n + 1):
        pixels, objects = _render(size, max_objects, g)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(folder / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for cls, mask in objects:
            rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                }
            )
    content = {
        "info": {"description": f"ssl-bench synthetic shapes, {split} split, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    path = annotation_file(folder, split)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(content))


def _render(size: int, max_objects: int, g: torch.Generator) -> tuple[np.ndarray, list[tuple[int, torch.Tensor]]]:
    """One (size, size, 3) uint8 image and its objects as (class index, bool mask (size, size))."""

    def rand() -> float:
        return float(torch.rand((), generator=g))

    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    bg_hue = rand()
    image = hsv_to_rgb(torch.tensor([bg_hue]), torch.tensor([0.2 + 0.6 * rand()]), torch.tensor([0.3 + 0.5 * rand()]))[0]
    image = image[:, None, None].expand(3, size, size)
    occupied = torch.zeros(size, size, dtype=torch.bool)
    objects = []
    for _ in range(1 + int(torch.randint(max_objects, (), generator=g))):
        near = torch.nn.functional.max_pool2d(occupied[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        for _ in range(PLACEMENT_ATTEMPTS):
            cls = int(torch.randint(len(CLASSES), (), generator=g))
            radius = size * (0.1 + 0.12 * rand())
            cx, cy = radius + (size - 2 * radius) * rand(), radius + (size - 2 * radius) * rand()
            angle = 2 * math.pi * rand()
            dx, dy = (x - cx) / radius, (y - cy) / radius
            u, v = math.cos(angle) * dx + math.sin(angle) * dy, -math.sin(angle) * dx + math.cos(angle) * dy
            mask = shape_mask(cls, u, v)
            if mask.any() and not (mask & near).any():
                hue = (bg_hue + 0.25 + 0.5 * rand()) % 1
                colour = hsv_to_rgb(torch.tensor([hue]), torch.tensor([0.5 + 0.5 * rand()]), torch.tensor([0.4 + 0.6 * rand()]))[0]
                image = torch.where(mask, colour[:, None, None], image)
                occupied |= mask
                objects.append((cls, mask))
                break
    image = image + 0.04 * torch.randn(3, size, size, generator=g)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return pixels, objects

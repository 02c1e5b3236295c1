"""COCO-format instance datasets read with pycocotools, as samples in torchvision's detection-references format.

Layout (the official COCO 2017 one): ``<root>/annotations/instances_<split>.json`` with the images of that
split in ``<root>/<split>/``; the splits are ``train2017`` and ``val2017`` for COCO 2017, any name for other
COCO-format sets (the synthetic shapes set of :mod:`bench.transfer.synthetic` uses ``train`` and ``val``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pydantic import Field
from torch.utils.data import Dataset

from bench.data.disk import require_root
from bench.data.decode import read_rgb
from bench.errors import DataError
from bench.schema import ConfigModel, PathField

COCO_2017_SPLITS = ("train2017", "val2017")
REQUIRED_FIELDS = {
    "images": frozenset({"id", "file_name", "height", "width"}),
    "annotations": frozenset({"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}),
    "categories": frozenset({"id", "name"}),
}


class CocoConfig(ConfigModel):
    """Where a COCO-format set lives and which of its annotations a detector trains on."""

    root: PathField = Field(description="folder holding annotations/instances_<split>.json and one image folder per split")
    train_split: str = Field("train2017", description="split the detector is fine-tuned on")
    val_split: str = Field("val2017", description="split the detector is evaluated on")
    classes: list[str] | None = Field(None, description="category names the annotation files must hold (any order)")
    min_size: float = Field(1.0, gt=0, description="annotations whose box is narrower or shorter than this many pixels are left out")


def annotation_file(root: Path, split: str) -> Path:
    """The instances file of ``split`` under ``root``."""
    return root / "annotations" / f"instances_{split}.json"


def image_dir(root: Path, split: str) -> Path:
    """The image folder of ``split`` under ``root``."""
    return root / split


def check_coco(cfg: CocoConfig) -> None:
    """Raise a DataError when the annotation file or the image folder of either split is missing (none is read)."""
    for split in (cfg.train_split, cfg.val_split):
        _check_split(cfg.root, split)


def _check_split(root: Path, split: str) -> None:
    source = _source(root, split)
    require_root(root, f"annotations/instances_{split}.json and {split}/", source)
    if not annotation_file(root, split).is_file():
        raise DataError(f"COCO annotation file {annotation_file(root, split)} not found; {source}")
    if not image_dir(root, split).is_dir():
        raise DataError(f"image folder {image_dir(root, split)} not found (named by {annotation_file(root, split)}); {source}")


def _source(root: Path, split: str) -> str:
    """How to obtain ``split`` (the official downloads for COCO 2017, the expected layout otherwise)."""
    if split in COCO_2017_SPLITS:
        return (
            "get COCO 2017 from http://images.cocodataset.org/annotations/annotations_trainval2017.zip and "
            f"http://images.cocodataset.org/zips/{split}.zip and extract both into {root}"
        )
    return (
        f"a COCO-format set needs {annotation_file(root, split)} and its images in {root / split}/; "
        "bench.transfer.synthetic.generate_coco_shapes writes such a set"
    )


def read_coco(root: Path, split: str) -> COCO:
    """The pycocotools index of ``<root>/annotations/instances_<split>.json``; a missing or malformed file raises a DataError."""
    path = annotation_file(root, split)
    source = _source(root, split)
    _check_split(root, split)
    try:
        content = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({err}); it is truncated or damaged: {source}") from err
    problem = _coco_problem(content)
    if problem is not None:
        raise DataError(f"{path} is not a COCO instances file: {problem}; {source}")
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_problem(content: object) -> str | None:
    """What makes ``content`` not a COCO instances file, or None when it is one."""
    if not isinstance(content, dict):
        return f"expected a JSON object with 'images', 'annotations' and 'categories', found a {type(content).__name__}"
    for key, fields in REQUIRED_FIELDS.items():
        entries = content.get(key)
        if not isinstance(entries, list):
            return f"expected a list under '{key}'"
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not fields <= entry.keys():
                found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                return f"{key}[{index}] must have the fields {', '.join(sorted(fields))}, found {found}"
    image_ids = {image["id"] for image in content["images"]}
    category_ids = {category["id"] for category in content["categories"]}
    for index, ann in enumerate(content["annotations"]):
        if ann["image_id"] not in image_ids:
            return f"annotations[{index}] refers to image_id {ann['image_id']}, which 'images' does not list"
        if ann["category_id"] not in category_ids:
            return f"annotations[{index}] refers to category_id {ann['category_id']}, which 'categories' does not list"
    return None


class CocoDetection(Dataset):
    """One split of a COCO-format set; item ``i`` is ``(image, target)`` in torchvision's detection-references format.

    image: uint8 (3, H, W) RGB (convert on the device: ``image.float() / 255`` for torchvision detectors).
    target: ``boxes`` float32 (N, 4) x1, y1, x2, y2 in pixels; ``labels`` int64 (N,) contiguous 1..K in the order
    of the category ids (0 is the background); ``masks`` uint8 (N, H, W); ``image_id`` int; ``area`` float32 (N,);
    ``iscrowd`` int64 (N,). Crowd annotations and boxes narrower or shorter than ``min_size`` pixels are left out;
    with ``train=True`` the images left without an annotation are skipped, otherwise every image is kept.
    """

    def __init__(self, root: Path, split: str, *, train: bool, min_size: float = 1.0):
        self.source = _source(root, split)
        self.annotation_file = annotation_file(root, split)
        self.image_dir = image_dir(root, split)
        self.min_size = min_size
        self.coco = read_coco(root, split)
        self.category_ids: list[int] = sorted(self.coco.cats)
        self.classes: list[str] = [self.coco.cats[c]["name"] for c in self.category_ids]
        self._labels = {category: label for label, category in enumerate(self.category_ids, start=1)}
        self.ids: list[int] = [i for i in sorted(self.coco.imgs) if not train or self._instances(i)]
        self._require_images()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path)
        if image.size != (info["width"], info["height"]):
            raise DataError(
                f"{path} is {image.size[0]}x{image.size[1]} pixels but {self.annotation_file} says "
                f"{info['width']}x{info['height']}; take images and annotations from the same release: {self.source}"
            )
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
        instances = self._instances(image_id)
        masks = [self.coco.annToMask(ann) for ann, _ in instances]
        target = {
            "boxes": torch.tensor([box for _, box in instances], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([self._labels[ann["category_id"]] for ann, _ in instances], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, *pixels.shape[1:], dtype=torch.uint8),
            "image_id": image_id,
            "area": torch.tensor([ann["area"] for ann, _ in instances], dtype=torch.float32),
            "iscrowd": torch.zeros(len(instances), dtype=torch.int64),
        }
        return pixels, target

    def _instances(self, image_id: int) -> list[tuple[dict, list[float]]]:
        """The kept annotations of an image, each with its box clipped to the image (x1, y1, x2, y2)."""
        info = self.coco.imgs[image_id]
        width, height = info["width"], info["height"]
        kept = []
        for ann in self.coco.imgToAnns[image_id]:
            if ann["iscrowd"]:
                continue
            x, y, w, h = ann["bbox"]
            box = [min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width), min(max(y + h, 0), height)]
            if box[2] - box[0] >= self.min_size and box[3] - box[1] >= self.min_size:
                kept.append((ann, box))
        return kept

    def _require_images(self) -> None:
        """Raise a DataError naming the missing files when an image of the split is not on disk."""
        present = set(os.listdir(self.image_dir))
        names = [self.coco.imgs[i]["file_name"] for i in self.ids]
        missing = [n for n in names if n not in present and not (self.image_dir / n).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(names)} images listed by {self.annotation_file} are missing from "
                f"{self.image_dir}, e.g. {', '.join(missing[:3])}; {self.source}"
            )


@dataclass(frozen=True)
class CocoSplits:
    """The fine-tuning and evaluation splits of a COCO-format set (same categories, same labels)."""

    train: CocoDetection
    val: CocoDetection


def load_coco(cfg: CocoConfig) -> CocoSplits:
    """Both splits of ``cfg``; categories that differ between them or from ``cfg.classes`` raise a DataError."""
    train = CocoDetection(cfg.root, cfg.train_split, train=True, min_size=cfg.min_size)
    val = CocoDetection(cfg.root, cfg.val_split, train=False, min_size=cfg.min_size)
    in_train, in_val = _categories(train), _categories(val)
    if in_train != in_val:
        raise DataError(
            f"the categories of {train.annotation_file} and {val.annotation_file} differ: "
            f"only in {cfg.train_split}: {', '.join(sorted(in_train - in_val)) or 'none'}; "
            f"only in {cfg.val_split}: {', '.join(sorted(in_val - in_train)) or 'none'}; "
            f"both splits must list the same categories (id and name): take them from one release; {train.source}"
        )
    if cfg.classes is not None and set(cfg.classes) != set(train.classes):
        unknown = [name for name in cfg.classes if name not in train.classes]
        unlisted = [name for name in train.classes if name not in cfg.classes]
        raise DataError(
            f"the categories of {train.annotation_file} do not match the configured classes: "
            f"configured but not in the file: {', '.join(map(repr, unknown)) or 'none'}; "
            f"in the file but not configured: {', '.join(map(repr, unlisted)) or 'none'}; "
            "fix `classes` in the COCO config or point `root` at the dataset that has these categories"
        )
    return CocoSplits(train, val)


def _categories(split: CocoDetection) -> set[str]:
    """The categories of a split as 'id:name' strings."""
    return {f"{c}:{split.coco.cats[c]['name']!r}" for c in split.category_ids}

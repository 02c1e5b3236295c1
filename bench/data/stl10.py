"""``stl10``: STL-10 read from the official binary files in ``stl10_binary/``.

Each image is stored as 3 x 96 x 96 bytes, channel by channel, each channel column-major; labels are
bytes 1..10. The 100k unlabeled images (2.7 GB) are memory-mapped and read only when pre-training asks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.data.base import ImageSet
from bench.data.disk import check_pretrain_split, dataset_dir, memory_split
from bench.data.folder import IMAGENET_MEAN, IMAGENET_STD
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits
from bench.errors import DataError

FOLDER = "stl10_binary"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE
PRETRAIN_SPLITS = ("train", "unlabeled", "train+unlabeled")


def read_images(path: Path, source: str) -> torch.Tensor:
    """(N, 3, 96, 96) uint8 row-major view over an STL-10 ``*_X.bin`` file (memory-mapped, not yet read)."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(
            f"{path} has {size} bytes, expected a positive multiple of {IMAGE_BYTES} (3x96x96 per image); "
            f"it is truncated: {source}"
        )
    data = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // IMAGE_BYTES, 3, SIZE, SIZE))
    return torch.from_numpy(data).transpose(2, 3)


def read_labels(path: Path, count: int, source: str) -> torch.Tensor:
    """Labels 0..9 of an STL-10 ``*_y.bin`` file (stored as 1..10), one per image of its ``*_X.bin``."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != count:
        raise DataError(f"{path} holds {raw.size} labels, expected {count} (one per image); re-download it: {source}")
    if raw.size and not 1 <= raw.min() <= raw.max() <= 10:
        raise DataError(f"{path}: labels must be 1..10, found {raw.min()}..{raw.max()}; re-download it: {source}")
    return torch.from_numpy(raw.astype(np.int64) - 1)


def _source(cfg: DatasetConfig) -> str:
    return f"download {URL} and extract it into {cfg.root}"


def _directory(cfg: DatasetConfig) -> Path:
    """The folder holding the binary files the pre-training split needs (each checked to exist, none read)."""
    check_pretrain_split("stl10", cfg.pretrain_split, PRETRAIN_SPLITS)
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"]
    return dataset_dir(cfg.root, FOLDER, names + (["unlabeled_X.bin"] if "unlabeled" in cfg.pretrain_split else []), _source(cfg))


def load_stl10(cfg: DatasetConfig) -> DatasetSplits:
    """STL-10 train and test; pre-training on 'train', 'unlabeled' (labels -1) or 'train+unlabeled'."""
    source = _source(cfg)
    uses_unlabeled = "unlabeled" in cfg.pretrain_split
    directory = _directory(cfg)
    classes = [line.strip() for line in (directory / "class_names.txt").read_text().splitlines() if line.strip()]
    if len(classes) != 10:
        raise DataError(f"{directory / 'class_names.txt'} lists {len(classes)} classes, expected 10; re-download it: {source}")

    def split(images: torch.Tensor, labels: torch.Tensor, split_name: str) -> ImageSet:
        meta = {"root": str(cfg.root), "split": split_name}
        return memory_split("stl10", images, labels, classes, (IMAGENET_MEAN, IMAGENET_STD), cfg.image_size, meta)

    def labeled(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = read_images(directory / f"{prefix}_X.bin", source)
        return images, read_labels(directory / f"{prefix}_y.bin", images.shape[0], source)

    train_x, train_y = labeled("train")
    train = split(train_x, train_y, "train")
    test = split(*labeled("test"), "test")
    if not uses_unlabeled:
        return DatasetSplits(pretrain=train, train=train, test=test)
    pretrain_x = read_images(directory / "unlabeled_X.bin", source)
    pretrain_y = torch.full((pretrain_x.shape[0],), -1, dtype=torch.long)
    if cfg.pretrain_split == "train+unlabeled":
        pretrain_x, pretrain_y = torch.cat([train_x, pretrain_x]), torch.cat([train_y, pretrain_y])
    return DatasetSplits(pretrain=split(pretrain_x, pretrain_y, cfg.pretrain_split), train=train, test=test)


STL10_DATASET = DatasetSpec("stl10", load_stl10, needs_root=True, channels=3, size=SIZE, check=_directory,
                            summary="STL-10: 5k train / 8k test / 100k unlabeled 96x96 RGB images, 10 classes")

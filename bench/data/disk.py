"""Helpers shared by the on-disk loaders: find a dataset's official folder under the user's root,
check its files, and build an in-memory split."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from bench.data.base import ImageSet, resize_images
from bench.errors import ConfigError, DataError


def require_root(root: Path, expected: str, source: str) -> None:
    """Raise a DataError naming the expected layout when the dataset root is not a directory."""
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory; expected {expected} in it; {source}")


def dataset_dir(root: Path, official: str, files: Sequence[str], source: str) -> Path:
    """The folder holding a dataset's ``files``: ``root/official`` when it exists, else ``root`` itself."""
    require_root(root, f"{official}/ holding {', '.join(files)}", source)
    candidate = root / official
    directory = candidate if candidate.is_dir() else root
    require_files(directory, files, source)
    return directory


def require_files(directory: Path, names: Sequence[str], source: str) -> None:
    """Raise a DataError naming every expected file when any of ``names`` is missing in ``directory``."""
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise DataError(
            f"{directory} lacks {', '.join(missing)} (expected files: {', '.join(names)}); {source}"
        )


def check_pretrain_split(dataset: str, split: str, valid: Sequence[str]) -> None:
    """Raise a ConfigError when ``split`` is not one of the dataset's pre-training splits."""
    if split not in valid:
        raise ConfigError(
            f"dataset.pretrain_split='{split}' is not available for {dataset}; choose one of: {', '.join(valid)}"
        )


def memory_split(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    image_size: int | None,
    meta: dict,
) -> ImageSet:
    """An in-memory split, resized to ``image_size`` when given (a view over a file is copied into memory)."""
    if image_size is not None:
        images = resize_images(images, image_size)
    mean, std = stats
    return ImageSet(name, images.contiguous(), labels.long(), classes, mean, std, meta)

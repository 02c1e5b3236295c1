"""Dataset registry: a name maps to a loader that returns the splits of a dataset.

Every loader takes a :class:`DatasetConfig` and returns :class:`DatasetSplits`. Small sets are
:class:`ImageSet` (one uint8 tensor); large image folders are :class:`FolderSet` (streamed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from pydantic import BaseModel, ConfigDict, Field

from bench.data.base import ImageSet
from bench.errors import ConfigError


class DatasetConfig(BaseModel):
    """Which dataset to load and how."""

    model_config = ConfigDict(extra="forbid")

    name: str = "shapes"
    root: Path | None = Field(None, description="directory holding the official files (not needed for digits/shapes)")
    image_size: int | None = Field(None, ge=8, description="resize images to this size (default: the dataset's own)")
    pretrain_split: str = Field("train", description="split(s) used for SSL pre-training, e.g. 'train+unlabeled' for STL-10")
    n_train: int | None = Field(None, ge=10, description="synthetic sets: number of training images")
    n_test: int | None = Field(None, ge=10, description="synthetic sets: number of test images")
    seed: int = Field(0, description="synthetic sets: generator seed")
    classes_file: Path | None = Field(None, description="imagefolder: text file of class folder names to keep (ImageNet-100)")


@dataclass
class DatasetSplits:
    """pretrain: images for SSL (labels may be -1); train/test: labeled splits for evaluation."""

    pretrain: "Split"
    train: "Split"
    test: "Split"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[DatasetConfig], DatasetSplits]
    needs_root: bool
    summary: str
    image_size: int  #: side of its images unless ``DatasetConfig.image_size`` resizes them


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, *, needs_root: bool, summary: str, image_size: int):
    def wrap(fn: Callable[[DatasetConfig], DatasetSplits]):
        DATASETS[name] = DatasetSpec(name, fn, needs_root, summary, image_size)
        return fn

    return wrap


def dataset_spec(name: str) -> DatasetSpec:
    _import_loaders()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def image_side(cfg: DatasetConfig) -> int:
    """Side of the images ``cfg`` loads (known before loading them)."""
    return cfg.image_size or dataset_spec(cfg.name).image_size


def load_dataset(cfg: DatasetConfig) -> DatasetSplits:
    spec = dataset_spec(cfg.name)
    if spec.needs_root and cfg.root is None:
        raise ConfigError(f"dataset '{cfg.name}' is read from disk: set dataset.root=/path/to/{cfg.name}")
    return spec.load(cfg)


def _import_loaders() -> None:
    # The loader modules register themselves on import.
    from bench.data import cifar, digits, folder, mnist, shapes, stl10  # noqa: F401


# Imported late so that registry stays import-cycle free.
from bench.data.folder import FolderSet  # noqa: E402

Split = Union[ImageSet, FolderSet]

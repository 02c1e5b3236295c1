"""Dataset registry: a name maps to a loader that returns the splits of a dataset.

Every loader takes a :class:`DatasetConfig` and returns :class:`DatasetSplits`. Small sets are
:class:`ImageSet` (one uint8 tensor); large image folders are :class:`FolderSet` (streamed). A loader that reads
files registers the check it starts with (the files it needs exist), which the preflight runs without loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Union

from pydantic import Field

from bench.data.base import ImageSet
from bench.data.folder_crops import Decode, Interpolation
from bench.errors import ConfigError
from bench.schema import FROM_YAML, ConfigModel, PathField


class DatasetConfig(ConfigModel):
    """Which dataset to load and how."""

    name: str = "shapes"
    root: PathField | None = Field(None, description="directory holding the official files (not needed for digits/shapes)")
    image_size: int | None = Field(None, ge=8, description="resize images to this size (default: the dataset's own)")
    pretrain_split: str = Field("train", description="split(s) used for SSL pre-training, e.g. 'train+unlabeled' for STL-10")
    n_train: int | None = Field(None, ge=10, description="synthetic sets: number of training images")
    n_test: int | None = Field(None, ge=10, description="synthetic sets: number of test images")
    seed: int = Field(0, description="synthetic sets: generator seed")
    classes_file: PathField | None = Field(None, description="imagefolder: text file of class folder names to keep (ImageNet-100)")
    interpolation: Annotated[Interpolation, FROM_YAML] = Field(
        Interpolation.bilinear, description="imagefolder: resampling of the training crops and the evaluation resize (antialiased); "
        "bicubic as DINOv2 / MAE")
    decode: Annotated[Decode, FROM_YAML] = Field(Decode.auto, description="imagefolder: auto decodes JPEGs with nvJPEG when training on CUDA, "
                           "cpu always in the DataLoader workers")


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
    channels: int  #: image channels
    size: int  #: image side, unless dataset.image_size resizes the images
    check: Callable[[DatasetConfig], object] | None  #: raises the DataError or ConfigError ``load`` would for a missing file


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, *, needs_root: bool, summary: str, channels: int, size: int,
                     check: Callable[[DatasetConfig], object] | None = None):
    def wrap(fn: Callable[[DatasetConfig], DatasetSplits]):
        DATASETS[name] = DatasetSpec(name, fn, needs_root, summary, channels, size, check)
        return fn

    return wrap


def dataset_spec(name: str) -> DatasetSpec:
    _import_loaders()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(cfg: DatasetConfig) -> DatasetSplits:
    spec = dataset_spec(cfg.name)
    _require_root(spec, cfg)
    return spec.load(cfg)


def check_dataset(cfg: DatasetConfig) -> None:
    """Raise the error ``load_dataset`` would raise for a missing root or file, reading no file."""
    spec = dataset_spec(cfg.name)
    _require_root(spec, cfg)
    if spec.check is not None:
        spec.check(cfg)


def image_shape(cfg: DatasetConfig) -> tuple[int, int, int]:
    """(channels, side, side) of the dataset's images as its loader gives them."""
    spec = dataset_spec(cfg.name)
    side = cfg.image_size or spec.size
    return spec.channels, side, side


def _require_root(spec: DatasetSpec, cfg: DatasetConfig) -> None:
    if spec.needs_root and cfg.root is None:
        raise ConfigError(f"dataset '{cfg.name}' is read from disk: set dataset.root to the folder holding its files, "
                          f"e.g. dataset.root=/data/{cfg.name}")


def _import_loaders() -> None:
    # The loader modules register themselves on import.
    from bench.data import cifar, digits, folder, mnist, shapes, stl10  # noqa: F401


# Imported late so that registry stays import-cycle free.
from bench.data.folder import FolderSet  # noqa: E402

Split = Union[ImageSet, FolderSet]

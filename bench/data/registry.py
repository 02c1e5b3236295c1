"""Dataset registry: a name maps to a loader that returns the splits of a dataset.

Every loader takes a :class:`DatasetConfig` and returns :class:`DatasetSplits`. Small sets are
:class:`ImageSet` (one uint8 tensor); large image folders are :class:`FolderSet` (streamed). ``load_dataset``
then holds out the validation split (``dataset.val``) of every dataset in one place, unless the loader
returned an official one. A loader that reads files registers the check it starts with (the files it needs
exist), which the preflight runs without loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Union

import torch
from pydantic import Field

from bench.data.balanced import hold_out
from bench.data.base import ImageSet
from bench.data.folder_crops import Decode, Interpolation
from bench.errors import ConfigError
from bench.schema import FROM_YAML, ConfigModel, PathField

#: ImageNet-1k (an image folder of 1000 classes) holds out this many per class: 10,000 images, BYOL's count
IMAGENET_VAL_PER_CLASS = 10
IMAGENET_CLASSES = 1000


class ValConfig(ConfigModel):
    """The validation split held out of the labelled training split: every selection reads it, never the test split."""

    fraction: float = Field(0.1, gt=0, lt=1, description="class-balanced share of each class (ignored when per_class is set)")
    per_class: int | None = Field(None, ge=1, description="images per class instead of a fraction (default for a "
                                  "1000-class image folder, ImageNet-1k: 10 per class = 10,000)")
    seed: int = Field(0, description="fixed, independent of the cell's seed: every cell sees the same validation split")
    in_pretrain: bool = Field(True, description="validation images (without labels) stay in the SSL pre-training set, "
                              "as BYOL's; false removes them (when pre-training on the labelled train split)")


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
    val: ValConfig = Field(default_factory=ValConfig, description="the validation split held out of the labelled train split")


@dataclass
class DatasetSplits:
    """pretrain: images for SSL (labels may be -1); train: probe fitting; val: every selection; test: the reported numbers.

    The three labelled splits are disjoint. A loader leaves ``val`` None unless the dataset has an official
    validation split apart from its test split; ``load_dataset`` holds it out of ``train`` otherwise.
    """

    pretrain: "Split"
    train: "Split"
    test: "Split"
    val: "Split | None" = None


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
    """The dataset's splits, the validation split held out of the labelled training split (``with_val``)."""
    return with_val(read_dataset(cfg), cfg.val)


def read_dataset(cfg: DatasetConfig) -> DatasetSplits:
    """The splits as the dataset's files (or generator) give them: no validation split unless an official one."""
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
def with_val(splits: DatasetSplits, cfg: ValConfig) -> DatasetSplits:
    """``splits`` with the validation split held out of its labelled training split (see ``ValConfig``).

    Per class, ``min(per_class, n_c - 1)`` or ``min(max(1, round_half_up(fraction * n_c)), n_c - 1)`` samples are
    drawn with ``cfg.seed`` (``bench.data.balanced.hold_out``). An official validation split (``splits.val``) is kept.
    """
    if splits.val is not None:
        return splits
    train = splits.train
    per_class = cfg.per_class
    if per_class is None and isinstance(train, FolderSet) and train.num_classes == IMAGENET_CLASSES:
        per_class = IMAGENET_VAL_PER_CLASS
    kept, held = hold_out(train.labels, fraction=cfg.fraction, per_class=per_class, seed=cfg.seed)
    if held.numel() == 0:
        raise ConfigError(f"dataset {train.name}: the validation split is empty (every class has one labelled image); "
                          "use a dataset with at least two labelled images per class")
    pretrain = splits.pretrain
    if not cfg.in_pretrain:
        pretrain = _without_val(splits, kept)
    return DatasetSplits(pretrain=pretrain, train=train.subset(kept), test=splits.test, val=train.subset(held))


def _without_val(splits: DatasetSplits, kept: torch.Tensor) -> "Split":
    """The pre-training split without the validation images (``dataset.val.in_pretrain: false``)."""
    if splits.pretrain is splits.train:
        return splits.train.subset(kept)
    if bool((splits.pretrain.labels < 0).all()):
        return splits.pretrain  # unlabelled images only: no validation image is in it
    raise ConfigError(f"dataset.val.in_pretrain=false: {splits.pretrain.name}'s pre-training split "
                      f"({splits.pretrain.meta.get('split', 'mixed')}) mixes labelled and unlabelled images; pre-train on "
                      "the labelled train split or the unlabelled one only, or set dataset.val.in_pretrain=true")


def _import_loaders() -> None:
    # The loader modules register themselves on import.
    from bench.data import cifar, digits, folder, mnist, shapes, stl10  # noqa: F401


# Imported late so that registry stays import-cycle free.
from bench.data.folder import FolderSet  # noqa: E402

Split = Union[ImageSet, FolderSet]

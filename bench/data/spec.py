"""What a dataset loader takes and gives: its config (:class:`DatasetConfig`), its splits (:class:`DatasetSplits`),
and the :class:`DatasetSpec` each loader module declares and ``bench.data.registry`` lists by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Union

from pydantic import Field

from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.folder_crops import Decode, Interpolation
from bench.schema import FROM_YAML, ConfigModel, PathField

Split = Union[ImageSet, FolderSet]


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

    pretrain: Split
    train: Split
    test: Split
    val: Split | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset by name: its loader, whether it reads files from ``dataset.root``, and its images' shape."""

    name: str
    load: Callable[[DatasetConfig], DatasetSplits]
    needs_root: bool
    summary: str
    channels: int  #: image channels
    size: int  #: image side, unless dataset.image_size resizes the images
    check: Callable[[DatasetConfig], object] | None = None  #: raises the DataError or ConfigError ``load`` would for a missing file

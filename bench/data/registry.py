"""Dataset registry: every dataset's name -> its :class:`DatasetSpec` (the loader and what it needs), in one table.

Every loader takes a :class:`DatasetConfig` and returns :class:`DatasetSplits`. Small sets are
:class:`ImageSet` (one uint8 tensor); large image folders are :class:`FolderSet` (streamed). ``load_dataset``
then holds out the validation split (``dataset.val``) of every dataset in one place, unless the loader
returned an official one. A loader that reads files declares the check it starts with (the files it needs
exist), which the preflight runs without loading. A new loader module declares its ``DatasetSpec`` and adds it
to ``DATASETS`` here (``tests/test_registries.py`` fails on one that is missing).
"""

from __future__ import annotations

import torch

from bench.data.balanced import hold_out
from bench.data.cifar import CIFAR10_DATASET, CIFAR20_DATASET, CIFAR100_DATASET
from bench.data.digits import DIGITS_DATASET
from bench.data.folder import FolderSet
from bench.data.imagefolder import IMAGEFOLDER_DATASET
from bench.data.mnist import FASHION_MNIST_DATASET, MNIST_DATASET
from bench.data.shapes import SHAPES_DATASET
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits, Split, ValConfig
from bench.data.stl10 import STL10_DATASET
from bench.errors import ConfigError

#: ImageNet-1k (an image folder of 1000 classes) holds out this many per class: 10,000 images, BYOL's count
IMAGENET_VAL_PER_CLASS = 10
IMAGENET_CLASSES = 1000

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    CIFAR10_DATASET, CIFAR100_DATASET, CIFAR20_DATASET, DIGITS_DATASET, IMAGEFOLDER_DATASET, MNIST_DATASET,
    FASHION_MNIST_DATASET, SHAPES_DATASET, STL10_DATASET,
)}


def dataset_spec(name: str) -> DatasetSpec:
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


def _without_val(splits: DatasetSplits, kept: torch.Tensor) -> Split:
    """The pre-training split without the validation images (``dataset.val.in_pretrain: false``)."""
    if splits.pretrain is splits.train:
        return splits.train.subset(kept)
    if bool((splits.pretrain.labels < 0).all()):
        return splits.pretrain  # unlabelled images only: no validation image is in it
    raise ConfigError(f"dataset.val.in_pretrain=false: {splits.pretrain.name}'s pre-training split "
                      f"({splits.pretrain.meta.get('split', 'mixed')}) mixes labelled and unlabelled images; pre-train on "
                      "the labelled train split or the unlabelled one only, or set dataset.val.in_pretrain=true")


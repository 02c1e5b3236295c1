"""``cifar10``, ``cifar100`` and ``cifar20`` (CIFAR-100's 20 superclasses), read from the official python pickles."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.data.base import ImageSet
from bench.data.disk import check_pretrain_split, dataset_dir, memory_split
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits
from bench.errors import DataError

IMAGE_BYTES = 3 * 32 * 32
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass(frozen=True)
class CifarFiles:
    """Where one CIFAR release keeps its pickles."""

    folder: str
    url: str
    train: tuple[str, ...]
    test: str
    meta: str

    def source(self, root: Path) -> str:
        return f"download {self.url} and extract it into {root}"


CIFAR10_FILES = CifarFiles(
    "cifar-10-batches-py",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)
CIFAR100_FILES = CifarFiles(
    "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", ("train",), "test", "meta"
)

# The only globals a CIFAR pickle needs: numpy arrays (as pickled by numpy 1.x and 2.x) and py2 byte strings.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a tampered file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path, source: str) -> dict:
    """One CIFAR pickle as a dict with bytes keys; a damaged file raises a DataError naming it."""
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any failure to decode the bytes (truncation, bad opcode, bad length) is a damaged file
        raise DataError(f"{path} is not a readable CIFAR pickle ({err}); it is truncated or damaged: {source}") from err
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(content).__name__}; {source}")
    return content


def _entry(content: dict, key: bytes, path: Path, source: str) -> object:
    if key not in content:
        raise DataError(f"{path} has no {key.decode()!r} entry (found {', '.join(map(repr, content))}); {source}")
    return content[key]


def read_batch(path: Path, label_key: bytes, num_classes: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) in ``0..num_classes-1`` of one data pickle."""
    content = read_pickle(path, source)
    data = np.asarray(_entry(content, b"data", path, source))
    labels = np.asarray(_entry(content, label_key, path, source))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{path}: expected 'data' as a uint8 array (N, {IMAGE_BYTES}), found {data.dtype} {data.shape}; "
            f"the file is damaged: {source}"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: expected {data.shape[0]} {label_key.decode()!r}, found {labels.size}; the file is damaged: {source}"
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}; the file is damaged: {source}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _directory(cfg: DatasetConfig, *, name: str, files: CifarFiles) -> Path:
    """The folder holding the release's pickles (each checked to exist, none read)."""
    check_pretrain_split(name, cfg.pretrain_split, ("train",))
    return dataset_dir(cfg.root, files.folder, [*files.train, files.test, files.meta], files.source(cfg.root))


def _load(
    cfg: DatasetConfig,
    name: str,
    files: CifarFiles,
    label_key: bytes,
    names_key: bytes,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> DatasetSplits:
    source = files.source(cfg.root)
    directory = _directory(cfg, name=name, files=files)
    meta_path = directory / files.meta
    classes = [n.decode() for n in _entry(read_pickle(meta_path, source), names_key, meta_path, source)]
    batches = [read_batch(directory / f, label_key, len(classes), source) for f in files.train]
    test_images, test_labels = read_batch(directory / files.test, label_key, len(classes), source)

    def split(images: torch.Tensor, labels: torch.Tensor, split_name: str) -> ImageSet:
        return memory_split(name, images, labels, classes, stats, cfg.image_size, {"root": str(cfg.root), "split": split_name})

    train = split(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), "train")
    return DatasetSplits(pretrain=train, train=train, test=split(test_images, test_labels, "test"))


def load_cifar10(cfg: DatasetConfig) -> DatasetSplits:
    """CIFAR-10 from ``cifar-10-batches-py/``."""
    return _load(cfg, "cifar10", CIFAR10_FILES, b"labels", b"label_names", CIFAR10_STATS)


def load_cifar100(cfg: DatasetConfig) -> DatasetSplits:
    """CIFAR-100 (fine labels) from ``cifar-100-python/``."""
    return _load(cfg, "cifar100", CIFAR100_FILES, b"fine_labels", b"fine_label_names", CIFAR100_STATS)


def load_cifar20(cfg: DatasetConfig) -> DatasetSplits:
    """CIFAR-100 images labelled with the 20 superclasses, from ``cifar-100-python/``."""
    return _load(cfg, "cifar20", CIFAR100_FILES, b"coarse_labels", b"coarse_label_names", CIFAR100_STATS)


CIFAR10_DATASET = DatasetSpec("cifar10", load_cifar10, needs_root=True, channels=3, size=32,
                              summary="CIFAR-10: 50k train / 10k test 32x32 RGB images, 10 classes",
                              check=partial(_directory, name="cifar10", files=CIFAR10_FILES))
CIFAR100_DATASET = DatasetSpec("cifar100", load_cifar100, needs_root=True, channels=3, size=32,
                               summary="CIFAR-100: 50k train / 10k test 32x32 RGB images, 100 classes",
                               check=partial(_directory, name="cifar100", files=CIFAR100_FILES))
CIFAR20_DATASET = DatasetSpec("cifar20", load_cifar20, needs_root=True, channels=3, size=32,
                              summary="CIFAR-100 with its 20 coarse superclasses as labels",
                              check=partial(_directory, name="cifar20", files=CIFAR100_FILES))

"""``mnist`` and ``fashion_mnist``, read from the official IDX files (plain or gzip-compressed).

The files may lie directly in the root or in ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``
(torchvision's layout).
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.data.base import ImageSet
from bench.data.disk import check_pretrain_split, memory_split, require_root
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits
from bench.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803 / 0x00000801: unsigned bytes, 3 or 1 dimensions


@dataclass(frozen=True)
class IdxRelease:
    """One dataset published as the four IDX files."""

    name: str
    raw_folder: str
    url: str
    classes: tuple[str, ...]
    stats: tuple[tuple[float, ...], tuple[float, ...]]

    def source(self, root: Path) -> str:
        return f"download {', '.join(f + '.gz' for f in FILES)} from {self.url} into {root}"


MNIST = IdxRelease(
    "mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/", tuple(str(d) for d in range(10)), ((0.1307,), (0.3081,))
)
FASHION_MNIST = IdxRelease(
    "fashion_mnist",
    "FashionMNIST",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ((0.2860,), (0.3530,)),
)


def read_idx(path: Path, magic: int, source: str) -> np.ndarray:
    """The uint8 array of an IDX file: (n,) for labels (magic 2049), (n, rows, cols) for images (magic 2051)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is not a valid gzip file ({err}); it is truncated or damaged: {source}") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: magic number {found}, expected {magic} (IDX {kind}); it is not an IDX {kind} file: {source}")
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX header; it is truncated: {source}")
    dims = [int(d) for d in np.frombuffer(raw[4:header], dtype=">u4")]
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: the header announces a {'x'.join(map(str, dims))} array ({expected} bytes of data), "
            f"found {len(raw) - header} bytes; it is truncated or damaged: {source}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_files(root: Path, release: IdxRelease) -> dict[str, Path]:
    """The path of each of the four files (plain preferred over .gz) in root, root/raw or root/<Name>/raw."""
    source = release.source(root)
    require_root(root, f"the IDX files {', '.join(FILES)} (optionally .gz), or {release.raw_folder}/raw/ holding them", source)
    candidates = (root, root / "raw", root / release.raw_folder / "raw")
    directory = next((d for d in candidates if any((d / f"{TRAIN_IMAGES}{ext}").is_file() for ext in ("", ".gz"))), root)
    found = {name: next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None) for name in FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"{directory} lacks {', '.join(missing)} (expected files: {', '.join(FILES)}, each optionally .gz, "
            f"in {root} or {root / release.raw_folder / 'raw'}); {source}"
        )
    return found


def _paths(cfg: DatasetConfig, *, release: IdxRelease) -> dict[str, Path]:
    """The four IDX files of ``release`` under ``cfg.root`` (each checked to exist, none read)."""
    check_pretrain_split(release.name, cfg.pretrain_split, ("train",))
    return _find_files(cfg.root, release)


def _load(cfg: DatasetConfig, release: IdxRelease) -> DatasetSplits:
    source = release.source(cfg.root)
    paths = _paths(cfg, release=release)

    def split(images_file: str, labels_file: str, split_name: str) -> ImageSet:
        images = read_idx(paths[images_file], IMAGES_MAGIC, source)
        labels = read_idx(paths[labels_file], LABELS_MAGIC, source)
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{paths[labels_file]} holds {labels.shape[0]} labels for the {images.shape[0]} images of "
                f"{paths[images_file]}; re-download both: {source}"
            )
        if labels.size and labels.max() >= len(release.classes):
            raise DataError(f"{paths[labels_file]}: label {labels.max()} outside 0..{len(release.classes) - 1}; re-download it: {source}")
        meta = {"root": str(cfg.root), "split": split_name}
        tensors = torch.from_numpy(images)[:, None], torch.from_numpy(labels)
        return memory_split(release.name, *tensors, list(release.classes), release.stats, cfg.image_size, meta)

    train = split(TRAIN_IMAGES, TRAIN_LABELS, "train")
    return DatasetSplits(pretrain=train, train=train, test=split(TEST_IMAGES, TEST_LABELS, "test"))


def load_mnist(cfg: DatasetConfig) -> DatasetSplits:
    """MNIST from its IDX files."""
    return _load(cfg, MNIST)


def load_fashion_mnist(cfg: DatasetConfig) -> DatasetSplits:
    """Fashion-MNIST from its IDX files."""
    return _load(cfg, FASHION_MNIST)


MNIST_DATASET = DatasetSpec("mnist", load_mnist, needs_root=True, channels=1, size=28, check=partial(_paths, release=MNIST),
                            summary="MNIST: 60k train / 10k test 28x28 grey handwritten digits")
FASHION_MNIST_DATASET = DatasetSpec("fashion_mnist", load_fashion_mnist, needs_root=True, channels=1, size=28,
                                    check=partial(_paths, release=FASHION_MNIST),
                                    summary="Fashion-MNIST: 60k train / 10k test 28x28 grey clothing images")

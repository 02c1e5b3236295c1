"""Datasets read from folders on disk.

``imagefolder``: a streamed :class:`FolderSet` over an ImageNet-style (``train/<class>/``, ``val/<class>/``) or Tiny ImageNet folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.data.disk import check_pretrain_split, require_files, require_root
from bench.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
DEFAULT_IMAGE_SIZE = 224


@dataclass
class FolderSet(Dataset):
    """A split streamed from image files: item ``i`` is (uint8 (3, S, S), label, i).

    Each image is converted to RGB, its shorter side resized to ``image_size`` (bilinear, antialiased)
    and the centre ``image_size`` x ``image_size`` square cropped.
    """

    name: str
    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int = DEFAULT_IMAGE_SIZE
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {len(self.files)} files")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = torch.from_numpy(center_square(read_rgb(self.files[i]), self.image_size))
        return image.permute(2, 0, 1).contiguous(), int(self.labels[i]), i

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return 3

    def labeled(self) -> "FolderSet":
        """Every sample of a folder carries a label."""
        return self


def read_rgb(path: Path) -> Image.Image:
    """Open an image file as RGB; an unreadable file raises a DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({err}); replace or delete that file") from err


def center_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and crop the centre; (size, size, 3) uint8."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


# Imported here, after FolderSet, because the registry imports FolderSet from this module.
from bench.data.registry import DatasetConfig, DatasetSplits, register_dataset  # noqa: E402

TINY_IMAGENET = "tiny-imagenet-200"
Samples = tuple[list[Path], list[int]]  # image files and their labels
FOLDER_SOURCE = (
    "expected <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG (ImageNet layout, "
    "https://image-net.org/download-images) or the Tiny ImageNet folder "
    "(http://cs231n.stanford.edu/tiny-imagenet-200.zip, extracted into <root>)"
)


@register_dataset(
    "imagefolder",
    needs_root=True,
    image_size=DEFAULT_IMAGE_SIZE,
    summary="ImageNet / ImageNet-100 (train/ and val/ class folders) or Tiny ImageNet, streamed from disk",
)
def load_imagefolder(cfg: DatasetConfig) -> DatasetSplits:
    """Train and val FolderSets of an ImageNet-style or Tiny ImageNet folder (layout detected)."""
    check_pretrain_split("imagefolder", cfg.pretrain_split, ("train",))
    require_root(cfg.root, "train/<class>/ and val/<class>/ image folders (ImageNet layout) or Tiny ImageNet's wnids.txt, train/, val/", FOLDER_SOURCE)
    tiny = cfg.root / TINY_IMAGENET
    directory = tiny if tiny.is_dir() else cfg.root
    wanted = _read_classes_file(cfg.classes_file) if cfg.classes_file is not None else None
    layout = "tiny-imagenet" if (directory / "wnids.txt").is_file() else "imagenet"
    read = _tiny_imagenet if layout == "tiny-imagenet" else _imagenet
    classes, train, val = read(directory, wanted)

    def split(samples: Samples, name: str) -> FolderSet:
        files, labels = samples
        meta = {"root": str(cfg.root), "layout": layout, "split": name}
        image_size = cfg.image_size or DEFAULT_IMAGE_SIZE
        return FolderSet("imagefolder", files, torch.tensor(labels, dtype=torch.long), classes, image_size=image_size, meta=meta)

    train_set = split(train, "train")
    return DatasetSplits(pretrain=train_set, train=train_set, test=split(val, "val"))


def _read_classes_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            f"classes file {path} does not exist; set dataset.classes_file to a text file with one class folder name per line"
        )
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise DataError(f"classes file {path} is empty; write one class folder name per line")
    return classes


def _images_in(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted; a missing or empty folder is a DataError."""
    if not folder.is_dir():
        raise DataError(f"class folder {folder} does not exist; {FOLDER_SOURCE}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{folder} holds no .jpg/.jpeg/.png images; {FOLDER_SOURCE}")
    return files


def _class_folders(folders: list[Path]) -> Samples:
    """All images of ``folders``, labelled by the folder's position in the list."""
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _images_in(folder)
        files += found
        labels += [label] * len(found)
    return files, labels


def _imagenet(directory: Path, wanted: list[str] | None) -> tuple[list[str], Samples, Samples]:
    """Classes and samples of ``train/<class>/`` and ``val/<class>/`` (classes: sorted folders, or ``wanted``)."""
    if not ((directory / "train").is_dir() and (directory / "val").is_dir()):
        raise DataError(f"{directory} has neither train/ and val/ folders nor wnids.txt; {FOLDER_SOURCE}")
    classes = wanted or sorted(p.name for p in (directory / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{directory / 'train'} holds no class folders; {FOLDER_SOURCE}")
    train = _class_folders([directory / "train" / c for c in classes])
    val = _class_folders([directory / "val" / c for c in classes])
    return classes, train, val


def _tiny_imagenet(directory: Path, wanted: list[str] | None) -> tuple[list[str], Samples, Samples]:
    """Classes and samples of Tiny ImageNet: ``train/<wnid>/images/``, ``val/images/`` + ``val_annotations.txt``."""
    annotations = directory / "val" / "val_annotations.txt"
    require_files(directory, ["wnids.txt", "val/val_annotations.txt"], FOLDER_SOURCE)
    wnids = sorted(line.strip() for line in (directory / "wnids.txt").read_text().splitlines() if line.strip())
    unknown = [c for c in wanted or [] if c not in wnids]
    if unknown:
        raise DataError(f"classes {', '.join(unknown)} of the classes file are not in {directory / 'wnids.txt'}")
    classes = wanted or wnids
    train = _class_folders([directory / "train" / c / "images" for c in classes])
    index = {wnid: label for label, wnid in enumerate(classes)}
    val_files: list[Path] = []
    val_labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in wnids:
            raise DataError(
                f"{annotations} line {number}: expected '<file>\\t<wnid>\\t...' with a wnid from wnids.txt, "
                f"found {line!r}; re-download Tiny ImageNet"
            )
        if fields[1] in index:
            val_files.append(directory / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
    if not val_files:
        raise DataError(f"{annotations} lists no images of the selected classes; re-download Tiny ImageNet")
    return classes, train, (val_files, val_labels)

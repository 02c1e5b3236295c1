"""The ``imagefolder`` dataset: streamed :class:`FolderSet` splits of an ImageNet-style (``train/<class>/``,
``val/<class>/``) or Tiny ImageNet folder."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.disk import check_pretrain_split, require_files, require_root
from bench.data.folder import DEFAULT_IMAGE_SIZE, FolderSet
from bench.data.folder_crops import EVAL_CROP
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits
from bench.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
TINY_IMAGENET = "tiny-imagenet-200"
Samples = tuple[list[Path], list[int]]  # image files and their labels
FOLDER_SOURCE = (
    "expected <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG (ImageNet layout, "
    "https://image-net.org/download-images) or the Tiny ImageNet folder "
    "(http://cs231n.stanford.edu/tiny-imagenet-200.zip, extracted into <root>)"
)


TINY_WNIDS, TINY_ANNOTATIONS = "wnids.txt", "val/val_annotations.txt"


def _layout(cfg: DatasetConfig) -> tuple[Path, str]:
    """The dataset folder and its layout, 'tiny-imagenet' or 'imagenet'; the files that layout starts from (and
    the classes file) are checked to exist, none is read."""
    check_pretrain_split("imagefolder", cfg.pretrain_split, ("train",))
    require_root(cfg.root, "train/<class>/ and val/<class>/ image folders (ImageNet layout) or Tiny ImageNet's wnids.txt, train/, val/", FOLDER_SOURCE)
    if cfg.classes_file is not None and not cfg.classes_file.is_file():
        raise DataError(
            f"classes file {cfg.classes_file} does not exist; set dataset.classes_file to a text file with one class folder name per line"
        )
    tiny = cfg.root / TINY_IMAGENET
    directory = tiny if tiny.is_dir() else cfg.root
    if (directory / TINY_WNIDS).is_file():
        require_files(directory, [TINY_WNIDS, TINY_ANNOTATIONS], FOLDER_SOURCE)
        return directory, "tiny-imagenet"
    if not ((directory / "train").is_dir() and (directory / "val").is_dir()):
        raise DataError(f"{directory} has neither train/ and val/ folders nor wnids.txt; {FOLDER_SOURCE}")
    return directory, "imagenet"


def load_imagefolder(cfg: DatasetConfig) -> DatasetSplits:
    """Train and val FolderSets of an ImageNet-style or Tiny ImageNet folder (layout detected)."""
    directory, layout = _layout(cfg)
    wanted = _read_classes_file(cfg.classes_file) if cfg.classes_file is not None else None
    read = _tiny_imagenet if layout == "tiny-imagenet" else _imagenet
    classes, train, val = read(directory, wanted)

    def split(samples: Samples, name: str) -> FolderSet:
        files, labels = samples
        meta = {"root": str(cfg.root), "layout": layout, "split": name}
        return FolderSet(
            "imagefolder", files, torch.tensor(labels, dtype=torch.long), classes, image_size=cfg.image_size or DEFAULT_IMAGE_SIZE,
            # Tiny ImageNet's 64 px squares are evaluated whole (resized to image_size), not centre-cropped
            eval_crop=1.0 if layout == "tiny-imagenet" else EVAL_CROP, interpolation=cfg.interpolation, decode=cfg.decode, meta=meta,
        )

    train_set = split(train, "train")
    return DatasetSplits(pretrain=train_set, train=train_set, test=split(val, "val"))



IMAGEFOLDER_DATASET = DatasetSpec(
    "imagefolder", load_imagefolder, needs_root=True, channels=3, size=DEFAULT_IMAGE_SIZE, check=_layout,
    summary="ImageNet / ImageNet-100 (train/ and val/ class folders) or Tiny ImageNet, streamed from disk",
)

def _read_classes_file(path: Path) -> list[str]:
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
    classes = wanted or sorted(p.name for p in (directory / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{directory / 'train'} holds no class folders; {FOLDER_SOURCE}")
    train = _class_folders([directory / "train" / c for c in classes])
    val = _class_folders([directory / "val" / c for c in classes])
    return classes, train, val


def _tiny_imagenet(directory: Path, wanted: list[str] | None) -> tuple[list[str], Samples, Samples]:
    """Classes and samples of Tiny ImageNet: ``train/<wnid>/images/``, ``val/images/`` + ``val_annotations.txt``."""
    annotations = directory / TINY_ANNOTATIONS
    wnids = sorted(line.strip() for line in (directory / TINY_WNIDS).read_text().splitlines() if line.strip())
    unknown = [c for c in wanted or [] if c not in wnids]
    if unknown:
        raise DataError(f"classes {', '.join(unknown)} of the classes file are not in {directory / TINY_WNIDS}")
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

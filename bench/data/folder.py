"""Datasets read from folders on disk.

``imagefolder``: a streamed :class:`FolderSet` over an ImageNet-style (``train/<class>/``, ``val/<class>/``) or Tiny ImageNet folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.decode import decode_images, read_bytes
from bench.data.disk import check_pretrain_split, require_files, require_root
from bench.data.folder_crops import EVAL_CROP, Decode, Interpolation, cut_views, eval_image
from bench.data.views import HostViews, ViewPlan
from bench.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
DEFAULT_IMAGE_SIZE = 224
CPU = torch.device("cpu")


@dataclass
class FolderSet(Dataset):
    """A split streamed from image files ``files[i]`` with labels ``labels[i]``.

    Item ``i`` is (the whole decoded image, uint8 RGB (3, H, W) with EXIF orientation applied, label, i).
    Batches (``assemble``) are fixed-size: evaluation images (the shorter side resized to
    ``round(image_size / eval_crop)``, the centre ``image_size`` square cut) or the training views of a
    ``ViewPlan``, each cut from the whole image. A subset is ``dataclasses.replace`` with the chosen files and labels.
    """

    name: str
    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int = DEFAULT_IMAGE_SIZE
    eval_crop: float = EVAL_CROP
    interpolation: Interpolation = Interpolation.bilinear
    decode: Decode = Decode.auto
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for {len(self.files)} files")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        [image] = decode_images([read_bytes(self.files[i])], CPU, [self.files[i]])
        return image, int(self.labels[i]), i

    def assemble(self, images: list[torch.Tensor], index: list[int], plan: ViewPlan | None) -> torch.Tensor | HostViews:
        """A batch of whole decoded images (any device) ``index``: evaluation images (B, 3, S, S), or ``plan``'s views."""
        if plan is None:
            return torch.stack([self.eval_image(image) for image in images])
        views = [cut_views(image, i, plan, self.interpolation) for image, i in zip(images, index)]
        clean = torch.stack([self.eval_image(image) for image in images]) if plan.clean else None
        return HostViews([torch.stack(view) for view in zip(*views)], clean)

    def eval_image(self, image: torch.Tensor) -> torch.Tensor:
        """The evaluation (and clean) image of one whole decoded image: uint8 (3, image_size, image_size)."""
        return eval_image(image, self.image_size, self.eval_crop, self.interpolation)

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

    def subset(self, index: torch.Tensor) -> "FolderSet":
        """The samples ``index`` (a 1-D integer tensor), in that order; the files are not read."""
        index = index.cpu().long()
        return replace(self, files=[self.files[i] for i in index.tolist()], labels=self.labels[index])


# Imported here, after FolderSet, because the registry imports FolderSet from this module.
from bench.data.registry import DatasetConfig, DatasetSplits, register_dataset  # noqa: E402

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


@register_dataset(
    "imagefolder",
    needs_root=True,
    summary="ImageNet / ImageNet-100 (train/ and val/ class folders) or Tiny ImageNet, streamed from disk",
    channels=3,
    size=DEFAULT_IMAGE_SIZE,
    check=_layout,
)
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

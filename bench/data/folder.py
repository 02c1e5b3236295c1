"""A split streamed from image files on disk: :class:`FolderSet` (the ``imagefolder`` loader is ``bench.data.imagefolder``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bench.data.decode import decode_images, read_bytes
from bench.data.folder_crops import EVAL_CROP, Decode, Interpolation, cut_views, eval_image
from bench.data.views import HostViews, ViewPlan

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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

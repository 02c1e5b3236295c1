"""Views handed to a method for one batch (the recipes that make them live beside this)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torchvision.transforms as T
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.data.augment import (
    color_jitter,
    gaussian_blur,
    grayscale,
    hflip,
    normalize,
    resized_crop,
    sample_crop_boxes,
    sample_jitter,
    sample_mask,
    sample_uniform,
    solarize,
)
from bench.errors import ConfigError
from bench.schema import FROM_YAML, ConfigModel


@dataclass
class Views:
    """crops: normalised float views, global crops first, then local crops (multi-crop).
    clean: the normalised, non-augmented images (or None when the method does not ask for them).
    labels: int64 labels of the batch (-1 where unlabeled); only supervised methods may read them.
    index: dataset indices of the batch (for caches keyed by sample).
    """

    crops: list[torch.Tensor]
    clean: torch.Tensor | None
    labels: torch.Tensor
    index: torch.Tensor


Probability = Annotated[float, Field(ge=0, le=1)]


class ViewSpec(ConfigModel):
    """One augmented view: random resized crop, flip, colour jitter, grayscale, blur, solarization.

    Each photometric op is applied to a sample with its own probability; a spec with scale (1, 1),
    ratio (1, 1) and every probability 0 is the identity.
    """

    model_config = ConfigDict(frozen=True)

    size: int | None = Field(None, ge=1, description="output side in pixels; None: size_fraction x the dataset's image size")
    size_fraction: float = Field(1.0, gt=0, le=1, description="output side relative to the image size, when size is None")
    scale: Annotated[tuple[float, float], FROM_YAML] = Field((0.08, 1.0), description="range of the crop's area fraction")
    ratio: Annotated[tuple[float, float], FROM_YAML] = Field((3 / 4, 4 / 3), description="range of the crop's aspect ratio (w / h)")
    flip_p: Probability = 0.5
    jitter: Annotated[tuple[float, float, float, float], FROM_YAML] = Field((0.4, 0.4, 0.2, 0.1), description="brightness, contrast, saturation, hue strengths")
    jitter_p: Probability = 0.8
    gray_p: Probability = 0.2
    blur_p: Probability = 0.0
    blur_sigma: Annotated[tuple[float, float], FROM_YAML] = (0.1, 2.0)
    blur_kernel: int | None = Field(None, description="odd kernel side; None: about 10% of the crop size (odd, >= 3)")
    solarize_p: Probability = 0.0

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("scale must be (low, high) with 0 < low <= high <= 1")
        return v

    @field_validator("ratio", "blur_sigma")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("expected (low, high) with 0 < low <= high")
        return v

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if min(v) < 0 or v[3] > 0.5:
            raise ValueError("jitter strengths must be >= 0 and the hue strength <= 0.5")
        return v

    @field_validator("blur_kernel")
    @classmethod
    def _kernel(cls, v: int | None) -> int | None:
        if v is not None and (v < 3 or v % 2 == 0):
            raise ValueError("blur_kernel must be an odd integer >= 3 (or null for 10% of the crop size)")
        return v

    @model_validator(mode="after")
    def _one_size(self) -> ViewSpec:
        if self.size is not None and self.size_fraction != 1.0:
            raise ValueError("set either size (pixels) or size_fraction, not both")
        return self

    def crop_size(self, image_size: int) -> int:
        """Output side in pixels for a dataset of square ``image_size`` images."""
        return self.size if self.size is not None else max(1, round(self.size_fraction * image_size))

    def kernel_size(self, crop_size: int) -> int:
        """Blur kernel side: the explicit one, else the odd number near 10% of the crop, at least 3."""
        return self.blur_kernel if self.blur_kernel is not None else max(3, int(0.1 * crop_size) // 2 * 2 + 1)


_SIMCLR = ViewSpec(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
_SWAV_COLOR = {"jitter": (0.8, 0.8, 0.8, 0.2), "blur_p": 0.5}

#: recipe name -> the views it makes (global views first, then local ones)
RECIPES: dict[str, list[ViewSpec]] = {
    # SimCLR (Chen et al., 2020): crop + flip, colour distortion strength 1, blur
    "simclr": [_SIMCLR, _SIMCLR],
    # BYOL (Grill et al., 2020), Table 6: asymmetric blur and solarization
    "byol": [ViewSpec(blur_p=1.0), ViewSpec(blur_p=0.1, solarize_p=0.2)],
    # solo-learn's CIFAR recipe (asymmetric.yaml): no blur, solarization on the second view
    "cifar": [ViewSpec(), ViewSpec(solarize_p=0.2)],
    # SimSiam (Chen & He, 2021), CIFAR experiments
    "simsiam_cifar": [ViewSpec(scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))] * 2,
    # SwAV (Caron et al., 2020): 2 x 224 (scale .14-1) + 6 x 96 (scale .05-.14), sizes relative to the image
    "multicrop": [ViewSpec(scale=(0.14, 1.0), **_SWAV_COLOR)] * 2
    + [ViewSpec(size_fraction=96 / 224, scale=(0.05, 0.14), **_SWAV_COLOR)] * 6,
    # supervised baseline: crop + flip only
    "supervised": [ViewSpec(jitter_p=0.0, gray_p=0.0)],
}


def build_recipe(recipe: str | Sequence[ViewSpec | dict[str, Any]]) -> list[ViewSpec]:
    """The views of a recipe given by name (see RECIPES) or as an explicit list of ViewSpec (or dicts)."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ConfigError(f"augment: unknown view recipe {recipe!r}; use one of {sorted(RECIPES)} or a list of views")
        return list(RECIPES[recipe])
    if not recipe:
        raise ConfigError("augment: the list of views is empty; give at least one view (e.g. [{}] for the default view)")
    specs = []
    for i, item in enumerate(recipe):
        try:
            specs.append(ViewSpec.model_validate(item))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (f"augment[{i}]", *first["loc"]))
            raise ConfigError(f"{where}: {first['msg']} (see ViewSpec in bench/data/views.py)") from None
    return specs


def _crop_is_identity(spec: ViewSpec, height: int, width: int, size: int) -> bool:
    """Whether the crop keeps the whole square image at its own size (then nothing is resampled)."""
    return spec.scale == (1.0, 1.0) and spec.ratio == (1.0, 1.0) and height == width == size


def _apply(images: torch.Tensor, out: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """``out`` for a random fraction ``p`` of the samples, ``images`` for the rest."""
    if p >= 1:
        return out
    return torch.where(sample_mask(images.shape[0], p, generator)[:, None, None, None], out, images)


def make_view(images: torch.Tensor, spec: ViewSpec, size: int, generator: torch.Generator) -> torch.Tensor:
    """One augmented view (B, C, size, size) of a float [0, 1] batch, with per-sample randomness.

    The input is never modified; an identity spec returns it unchanged.
    """
    batch, _, height, width = images.shape
    x = images
    if not _crop_is_identity(spec, height, width, size):
        x = resized_crop(x, sample_crop_boxes(batch, height, width, spec.scale, spec.ratio, generator), size)
    return photometrics(x, spec, generator)


def photometrics(x: torch.Tensor, spec: ViewSpec, generator: torch.Generator) -> torch.Tensor:
    """Flip, colour jitter, grayscale, blur and solarization of a float [0, 1] batch of cropped views."""
    batch, size = x.shape[0], x.shape[-1]
    if spec.flip_p > 0:
        x = hflip(x, sample_mask(batch, spec.flip_p, generator))
    if spec.jitter_p > 0 and any(spec.jitter):
        x = _apply(x, color_jitter(x, sample_jitter(batch, spec.jitter, generator)), spec.jitter_p, generator)
    if spec.gray_p > 0:
        x = _apply(x, grayscale(x), spec.gray_p, generator)
    if spec.blur_p > 0:
        sigma = sample_uniform(batch, *spec.blur_sigma, generator)
        x = _apply(x, gaussian_blur(x, sigma, spec.kernel_size(size)), spec.blur_p, generator)
    if spec.solarize_p > 0:
        x = _apply(x, solarize(x), spec.solarize_p, generator)
    return x


@dataclass(frozen=True)
class ViewPlan:
    """The geometry of one epoch's views of a streamed (folder) set, cut on the host from each whole image.

    View ``v`` of sample ``index`` is a RandomResizedCrop with ``specs[v]``'s scale and ratio, resized to
    ``sizes[v]``; its box comes from a generator seeded by (seed, epoch, index, v), so a resumed run replays it.
    ``clean`` asks for the clean (evaluation) image too.
    """

    specs: tuple[ViewSpec, ...]
    sizes: tuple[int, ...]
    clean: bool
    seed: int
    epoch: int


@dataclass
class HostViews:
    """Views cut on the host: one uint8 (B, C, S_v, S_v) tensor per view of the plan, and the clean images."""

    crops: list[torch.Tensor]
    clean: torch.Tensor | None

    def to(self, device: torch.device, non_blocking: bool = False) -> "HostViews":
        clean = None if self.clean is None else self.clean.to(device, non_blocking=non_blocking)
        return HostViews([c.to(device, non_blocking=non_blocking) for c in self.crops], clean)

    def pin_memory(self) -> "HostViews":
        """Page-locked copies (the DataLoader calls this with pin_memory=True)."""
        return HostViews([c.pin_memory() for c in self.crops], None if self.clean is None else self.clean.pin_memory())


class ViewMaker:
    """Turns a uint8 batch into the normalised views of a recipe (and the clean view when asked)."""

    def __init__(self, specs: list[ViewSpec], mean: Sequence[float], std: Sequence[float], image_size: int, clean: bool):
        if not specs:
            raise ConfigError("augment: no views; give a recipe name or at least one view")
        self.specs = list(specs)
        self.sizes = [spec.crop_size(image_size) for spec in self.specs]
        if self.sizes != sorted(self.sizes, reverse=True):
            raise ConfigError(f"augment: view sizes {self.sizes} for {image_size}px images; list global (larger) views before local ones")
        for i, (spec, size) in enumerate(zip(self.specs, self.sizes)):
            if spec.blur_p > 0 and spec.kernel_size(size) // 2 >= size:
                raise ConfigError(f"augment[{i}].blur_kernel: {spec.kernel_size(size)} is too large for {size}px crops; use an odd kernel below {2 * size}")
        self.clean = clean
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            self._stats[device] = (self._mean.to(device), self._std.to(device))
        return self._stats[device]

    def plan(self, seed: int, epoch: int) -> ViewPlan:
        """This recipe's views for a streamed set, whose geometry is cut on the host (see ViewPlan)."""
        return ViewPlan(tuple(self.specs), tuple(self.sizes), self.clean, seed, epoch)

    def __call__(self, images: torch.Tensor | HostViews, labels: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> Views:
        """Views of a uint8 batch; all randomness comes from ``generator`` (on the batch's device).

        ``images`` is either (B, C, H, W), each view then cropped here, or the views of ``plan`` already cut on the
        host; the photometric ops are the same for both.
        """
        if isinstance(images, HostViews):
            device = images.crops[0].device
            x = None if images.clean is None else images.clean.float().div_(255)
            views = (photometrics(crop.float().div_(255), spec, generator) for crop, spec in zip(images.crops, self.specs))
        else:
            device = images.device
            x = images.float().div_(255)
            views = (make_view(x, spec, size, generator) for spec, size in zip(self.specs, self.sizes))
        mean, std = self._stats_on(device)
        crops = [normalize(view, mean, std) for view in views]  # one view at a time: the float views are not all held
        return Views(crops, normalize(x, mean, std) if self.clean else None, labels, index)


def torchvision_pipeline(spec: ViewSpec, mean: Sequence[float], std: Sequence[float], image_size: int) -> T.Compose:
    """The same view made the classic way: torchvision's per-sample transforms on one PIL image."""
    size = spec.crop_size(image_size)
    b, c, s, h = spec.jitter
    return T.Compose([
        T.RandomResizedCrop(size, scale=spec.scale, ratio=spec.ratio),
        T.RandomHorizontalFlip(spec.flip_p),
        T.RandomApply([T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=spec.jitter_p),
        T.RandomGrayscale(spec.gray_p),
        T.RandomApply([T.GaussianBlur(spec.kernel_size(size), sigma=spec.blur_sigma)], p=spec.blur_p),
        T.RandomSolarize(128, p=spec.solarize_p),  # uint8 v >= 128  <=>  v / 255 >= 0.5
        T.ToTensor(),
        T.Normalize(mean, std),
    ])

"""Non-learnable representations of clean images for MV-MR's L3 term (Kinakh et al., Entropy 2024).

Each deterministic representation is a pure function of a float batch (B, C, H, W) of clean images
normalised with the dataset statistics, returning (B, D_k); ``bench.representations.registry`` names it with typed,
frozen params so that the disk cache (bench.representations.cache) can key on them. The
``augmented`` representation is random, so it is not registered but computed per step by
:func:`augmented`.

Choices against the official code (github.com/vkinakh/mv-mr):
- hog: scikit-image's HOG per channel (24 orientations, 8x8 cells, 1x1 blocks, so each cell's
  histogram is L2-Hys normalised), concatenated over channels; the paper's code uses its own torch
  HOG layer (Sobel gradients, 8x8 average pooling, no normalisation). Same dimension C*24*(H/8)*(W/8).
- lsd: the 3x3 box filter pads by reflection, as kornia's box_blur does in the code.
- augmented: per-sample random parameters (make_view); the code draws one set per batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from pydantic import ConfigDict, Field
from skimage.feature import hog as skimage_hog
from skimage.feature import local_binary_pattern

from bench.data.augment import normalize
from bench.data.views import ViewSpec, make_view
from bench.schema import ConfigModel

#: the representation computed per step (random), never cached
AUGMENTED = "augmented"


class RepParams(ConfigModel):
    """Typed parameters of one representation (frozen: hashable, part of the cache key)."""

    model_config = ConfigDict(frozen=True)

    def identity(self) -> dict[str, Any]:
        """What the cached values depend on besides the dataset and the image shape."""
        return self.model_dump(mode="json")


class RawParams(RepParams):
    """The flattened normalised image has no parameters."""


class ScatteringParams(RepParams):
    J: int = Field(2, ge=1, description="number of scales (output at 1/2^J resolution)")
    L: int = Field(8, ge=1, description="number of orientations")


class HogParams(RepParams):
    orientations: int = Field(24, ge=1, description="histogram bins over [0, 180) degrees")
    pixels_per_cell: int = Field(8, ge=2, description="side of a square cell in pixels")


class LbpParams(RepParams):
    P: int = Field(8, ge=1, description="number of circular neighbours")
    R: float = Field(1.0, gt=0, description="radius of the circle")
    cell: int = Field(8, ge=2, description="side of the square cells whose code histograms are concatenated")


class LsdParams(RepParams):
    window: int = Field(3, ge=3, description="odd side of the box over which the local std is taken")


class AugmentedParams(RepParams):
    view: ViewSpec = Field(
        ViewSpec(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=1.0),
        description="the paper's augmentation (crop, flip, jitter 0.8/0.8/0.8/0.2 p .8, grey p .2, blur always as in the code)",
    )
    seed: int = Field(0, description="the step-t draw uses a generator seeded with seed + t (resumes reproduce it)")


@dataclass(frozen=True)
class Representation:
    name: str
    Params: type[RepParams]
    compute: Callable[[torch.Tensor, Any], torch.Tensor]


def raw(x: torch.Tensor, params: RawParams) -> torch.Tensor:
    """The flattened image."""
    return x.flatten(1)


@functools.lru_cache(maxsize=8)
def _scattering(J: int, L: int, height: int, width: int) -> ScatteringTorch2D:
    # kymatio.torch imports a SciPy name removed in SciPy 1.17; the frontend module does not.
    return ScatteringTorch2D(J=J, shape=(height, width), L=L)


@torch.no_grad()
def scattering(x: torch.Tensor, params: ScatteringParams) -> torch.Tensor:
    """2-D scattering transform of each colour channel (order 2), flattened."""
    module = _scattering(params.J, params.L, x.shape[-2], x.shape[-1]).to(x.device)
    return module(x.float().contiguous()).flatten(1)


def _per_channel(x: torch.Tensor, fn: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply a numpy function to every (H, W) channel of every image; concatenate over channels."""
    images = x.detach().to("cpu", torch.float64).numpy()
    rows = [np.concatenate([fn(channel) for channel in image]) for image in images]
    return torch.from_numpy(np.stack(rows)).to(x.device, torch.float32)


def hog(x: torch.Tensor, params: HogParams) -> torch.Tensor:
    """scikit-image HOG of each channel with 1x1-cell blocks, concatenated."""
    cell = (params.pixels_per_cell, params.pixels_per_cell)
    return _per_channel(
        x, lambda c: skimage_hog(c, orientations=params.orientations, pixels_per_cell=cell, cells_per_block=(1, 1), channel_axis=None)
    )


def _lbp_histograms(channel: np.ndarray, params: LbpParams) -> np.ndarray:
    # LBP is invariant to increasing affine maps of intensity: rescale to 0..255 integers as skimage asks.
    low, high = channel.min(), channel.max()
    levels = np.round((channel - low) * (255.0 / max(high - low, 1e-12))).astype(np.uint8)
    codes = local_binary_pattern(levels, params.P, params.R, method="uniform").astype(np.int64)  # values 0..P+1
    bins, c = params.P + 2, params.cell
    rows, cols = channel.shape[0] // c, channel.shape[1] // c
    cells = codes[: rows * c, : cols * c].reshape(rows, c, cols, c).transpose(0, 2, 1, 3).reshape(rows * cols, c * c)
    offsets = np.arange(rows * cols)[:, None] * bins
    counts = np.bincount((cells + offsets).ravel(), minlength=rows * cols * bins)
    return counts / (c * c)


def lbp(x: torch.Tensor, params: LbpParams) -> torch.Tensor:
    """Uniform LBP code histograms (P + 2 bins, fractions) over square cells of each channel."""
    return _per_channel(x, lambda c: _lbp_histograms(c, params))


def lsd(x: torch.Tensor, params: LsdParams) -> torch.Tensor:
    """Local standard deviation sqrt(box(x^2) - box(x)^2 + 1e-8), flattened."""
    pad = params.window // 2

    def box(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), params.window, stride=1)

    x = x.float()
    return (box(x * x) - box(x) ** 2).clamp_min(0).add(1e-8).sqrt().flatten(1)  # clamp: rounding can go below 0


def augmented(
    clean: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, params: AugmentedParams, step: int
) -> torch.Tensor:
    """A fresh random augmentation of the clean batch, normalised and flattened.

    ``mean``/``std`` are (1, C, 1, 1) on the batch's device; the draw is a function of ``step``.
    """
    generator = torch.Generator(device=clean.device).manual_seed(params.seed + step)
    images = (clean.float() * std + mean).clamp_(0, 1)
    view = make_view(images, params.view, clean.shape[-1], generator)
    return normalize(view, mean, std).flatten(1)

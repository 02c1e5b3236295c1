"""The raw-pixel "backbone": the normalised pixels themselves as features, the baseline of no learning at all.

Images larger than ``size`` are average-pooled to ``size`` x ``size`` first (``docs/protocols.md`` §3.2: 32 px for images
over 64 px, so a 224 px image gives 3072 features, not 150528); smaller ones keep every pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelFeatures(nn.Module):
    """(B, C, H, W) normalised images -> (B, C * s * s) with s = min(H, ``size``); no parameters."""

    def __init__(self, image_shape: tuple[int, int, int], size: int | None):
        super().__init__()
        channels, side, _ = image_shape
        self.size = size
        self.out_dim = channels * min(side, size or side) ** 2  #: for the images of ``image_shape``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and max(x.shape[-2:]) > self.size:
            x = F.adaptive_avg_pool2d(x, self.size)
        return x.flatten(1)

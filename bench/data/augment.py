"""Batched image augmentation on the tensor's device, with per-sample randomness.

Every op works on a whole float batch (B, C, H, W) in [0, 1] (C is 1 or 3) without a Python loop
over samples. Ops are pure functions of the images and of per-sample parameter tensors, so each can
be checked against torchvision's functional op with fixed parameters; the ``sample_*`` functions
draw those parameters from an explicit ``torch.Generator`` (on the data's device), which makes a
run reproducible and resumable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses them
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
CROP_ATTEMPTS = 10


def sample_mask(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Bool (B,): True for each sample independently with probability ``p``."""
    return torch.rand(batch, generator=generator, device=generator.device) < p


def sample_uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """Float (B,) drawn from U(low, high)."""
    return torch.rand(batch, generator=generator, device=generator.device).mul_(high - low).add_(low)


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Int64 (B, 4) crop boxes (top, left, h, w), drawn as torchvision's RandomResizedCrop.get_params.

    Each sample makes 10 attempts (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)) and
    keeps the first that fits in the image; a sample with no fitting attempt gets the central crop
    clipped to the ratio range. All attempts of all samples are drawn at once.
    """
    device = generator.device
    draws = torch.rand(batch, CROP_ATTEMPTS, 2, generator=generator, device=device)
    area = draws[..., 0].mul_(scale[1] - scale[0]).add_(scale[0]).mul_(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = draws[..., 1].mul_(log_hi - log_lo).add_(log_lo).exp_()
    w = (area * aspect).sqrt_().round_()
    h = (area / aspect).sqrt_().round_()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)
    fallback_h, fallback_w = _central_crop_size(height, width, ratio)
    h = torch.where(found, h, fallback_h).long()
    w = torch.where(found, w, fallback_w).long()
    offsets = torch.rand(batch, 2, generator=generator, device=device)
    top = (offsets[:, 0] * (height - h + 1)).long().clamp_(max=height - h)
    left = (offsets[:, 1] * (width - w + 1)).long().clamp_(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack((top, left, h, w), dim=1)


def _central_crop_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """(h, w) of torchvision's fallback: the whole image, clipped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return float(round(width / min(ratio))), float(width)
    if in_ratio > max(ratio):
        return float(height), float(round(height * max(ratio)))
    return float(height), float(width)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each sample to its box (top, left, h, w) and resample it to (size, size), bilinear.

    Output pixel j of a crop [left, left + w) samples input x = left + (j + 0.5) * w / size - 0.5,
    clamped to the crop's edge pixels, through one separable ``grid_sample`` grid; this equals
    torchvision's ``resized_crop(..., antialias=False)``.
    """
    batch, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(dim=1)
    ys = _grid_axis(top, h, size, height)
    xs = _grid_axis(left, w, size, width)
    grid = torch.stack(
        (xs[:, None, :].expand(batch, size, size), ys[:, :, None].expand(batch, size, size)), dim=-1
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grid_axis(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """Normalised (align_corners=False) sampling positions (B, size) along one axis of the crops."""
    j = torch.arange(size, device=start.device, dtype=start.dtype).add_(0.5)
    pos = start[:, None] + j * (length / size)[:, None] - 0.5
    pos = torch.minimum(torch.maximum(pos, start[:, None]), (start + length - 1)[:, None])
    return pos.mul_(2).add_(1).div_(extent).sub_(1)


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the samples where ``mask`` (bool (B,)) is set."""
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor[:, None, None, None]


def _gray(images: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of an RGB batch; a 1-channel batch is its own luma."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1] (torchvision's _blend)."""
    f = _per_sample(factor)
    return (images * f).add_(other * (1 - f)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each sample by its factor (B,), clamped to [0, 1]."""
    return (images * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each sample with the mean of its luma."""
    return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each RGB sample with its luma image; identity on 1-channel images."""
    if images.shape[1] == 1:
        return images
    return _blend(images, _gray(images), factor)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each RGB sample by its factor (B,) in [-0.5, 0.5] turns; identity on 1 channel.

    A hue rotation keeps the max channel and the chroma c = max - min, so instead of a full
    RGB -> HSV -> RGB round trip the hue h (in sextants, [0, 6)) is rotated and each output channel
    is min + c * clamp(|((h + n) mod 6) - 3| - 1, 0, 1), with n = 6, 4, 2 for R, G, B.
    """
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    high = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = high - low
    # the max channel picks the hue formula; ties go to r, then g, as in torchvision
    is_r = high == r
    is_g = (high == g).logical_and_(is_r.logical_not())
    is_b = (is_r | is_g).logical_not_()
    hue = (g - b).mul_(is_r)
    hue += (b - r).add_(chroma, alpha=2).mul_(is_g)
    hue += (r - g).add_(chroma, alpha=4).mul_(is_b)
    hue.div_(chroma.clamp_min(torch.finfo(images.dtype).tiny)).add_(factor[:, None, None] * 6)
    # hue lies in [-4, 8) here; adding 12 keeps fmod's argument positive
    channels = [(hue + n).fmod_(6).sub_(3).abs_().sub_(1).clamp_(0, 1).mul_(chroma).add_(low) for n in (18.0, 16.0, 14.0)]
    return torch.stack(channels, dim=1)


def sample_jitter(
    batch: int, strength: tuple[float, float, float, float], generator: torch.Generator
) -> tuple[torch.Tensor | None, ...]:
    """Per-sample (brightness, contrast, saturation, hue) factors from torchvision's ColorJitter ranges.

    Brightness, contrast and saturation ~ U(max(0, 1 - s), 1 + s), hue ~ U(-h, h); a zero strength
    gives None (the op is skipped).
    """
    *scales, hue = strength
    factors = [sample_uniform(batch, max(0.0, 1 - s), 1 + s, generator) if s > 0 else None for s in scales]
    return (*factors, sample_uniform(batch, -hue, hue, generator) if hue > 0 else None)


def color_jitter(images: torch.Tensor, factors: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue (in this fixed order) with per-sample factors.

    torchvision's ColorJitter draws a random order of the four ops for each image; here the order is
    fixed, which keeps the batch vectorised. A None factor skips its op.
    """
    for op, factor in zip((adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue), factors):
        if factor is not None:
            images = op(images, factor)
    return images


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma replicated over the C channels (C is kept)."""
    return _gray(images).expand_as(images).contiguous()


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each sample with its own Gaussian (sigma (B,)), odd ``kernel_size``, reflect padding.

    Separable: one horizontal and one vertical grouped convolution with a kernel per (sample, channel).
    """
    batch, channels, height, width = images.shape
    half = (kernel_size - 1) / (2 * math.sqrt(2))
    t = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel = torch.softmax(-(t[None, :] / sigma[:, None]).square(), dim=1)  # (B, k)
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect").reshape(1, batch * channels, height + 2 * pad, width + 2 * pad)
    x = F.conv2d(x, kernel[:, None, None, :], groups=batch * channels)
    x = F.conv2d(x, kernel[:, None, :, None], groups=batch * channels)
    return x.reshape(batch, channels, height, width)


def solarize(images: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert (1 - x) every value at or above ``threshold``."""
    return torch.where(images >= threshold, 1 - images, images)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(images - mean) / std with per-channel mean and std of shape (1, C, 1, 1)."""
    return (images - mean).div_(std)

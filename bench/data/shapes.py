"""``shapes``: a seeded, procedurally generated classification set (no download).

Ten shape classes drawn with a random colour, size, position and rotation on a randomly coloured,
mottled (low-frequency noise) gradient background, with pixel noise. Colour, position and background dominate the raw pixels, so
raw-pixel kNN is weak, while a representation that is invariant to crops and colour recognises the
shape. It is the test-bed of every method: fast to make (a few seconds for 10k images) and
deterministic for a given seed and size.
"""

from __future__ import annotations

import math

import torch

from bench.data.base import ImageSet, channel_stats, resize_images
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits

CLASSES = ["circle", "ring", "triangle", "square", "star", "cross", "crescent", "half_disk", "ell", "bar"]
SIZE = 32
SUPERSAMPLE = 2


def shape_mask(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of class ``cls`` in shape coordinates (the shape's radius is 1)."""
    r = torch.sqrt(u * u + v * v)
    if cls == 0:
        return r <= 1
    if cls == 1:
        return (r <= 1) & (r >= 0.55)
    if cls == 2:
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= (u * math.cos(a) + v * math.sin(a)) <= 0.5
        return inside
    if cls == 3:
        return torch.maximum(u.abs(), v.abs()) <= 0.75
    if cls == 4:
        theta = torch.atan2(v, u)
        return r <= 0.5 + 0.5 * torch.cos(5 * theta).clamp(min=0) ** 0.7
    if cls == 5:
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if cls == 6:
        return (r <= 1) & ((u - 0.45) ** 2 + v * v > 0.64)
    if cls == 7:
        return (r <= 1) & (v >= -0.15)
    if cls == 8:
        return ((u >= -0.8) & (u <= -0.3) & (v.abs() <= 0.9)) | ((u.abs() <= 0.8) & (v >= 0.4) & (v <= 0.9))
    return (u.abs() <= 1) & (v.abs() <= 0.25)


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) HSV in [0,1] -> (N, 3) RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    f = v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return f


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 3, 32, 32) uint8 and balanced labels, a pure function of (n, seed)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        images[start:stop] = _render(labels[start:stop], g)
    return images, labels


def _render(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    m = labels.shape[0]
    s = SIZE * SUPERSAMPLE
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel centres in 32-px units
    y, x = torch.meshgrid(coords, coords, indexing="ij")

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    # Background: one random colour with per-pixel noise texture. Nothing in it is shared by two
    # crops of an image except its colour, which colour jitter removes, so the shape is the signal.
    bg_h, fg_shift = rand(m), 0.25 + 0.5 * rand(m)
    bg = hsv_to_rgb(bg_h, 0.2 + 0.6 * rand(m), 0.3 + 0.5 * rand(m))
    img = bg[:, :, None, None] + 0.08 * torch.randn(m, 3, s, s, generator=g)

    # Foreground: one shape with its own colour, size, position and rotation.
    fg = hsv_to_rgb((bg_h + fg_shift) % 1, 0.5 + 0.5 * rand(m), 0.4 + 0.6 * rand(m))
    radius = 7.0 + 7.0 * rand(m)
    cx = radius + (SIZE - 2 * radius) * rand(m)
    cy = radius + (SIZE - 2 * radius) * rand(m)
    angle = 2 * math.pi * rand(m)
    dx = (x[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (y[None] - cy[:, None, None]) / radius[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = torch.zeros(m, s, s, dtype=torch.bool)
    for cls in range(len(CLASSES)):
        sel = labels == cls
        if sel.any():
            mask[sel] = shape_mask(cls, u[sel], v[sel])
    img = torch.where(mask[:, None], fg[:, :, None, None], img)

    img = torch.nn.functional.avg_pool2d(img, SUPERSAMPLE)  # anti-aliasing
    img = img + 0.04 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def load_shapes(cfg: DatasetConfig) -> DatasetSplits:
    n_train, n_test = cfg.n_train or 5000, cfg.n_test or 1000
    train_x, train_y = generate(n_train, seed=2 * cfg.seed)
    test_x, test_y = generate(n_test, seed=2 * cfg.seed + 1)
    if cfg.image_size:
        train_x, test_x = resize_images(train_x, cfg.image_size), resize_images(test_x, cfg.image_size)
    mean, std = channel_stats(train_x)
    meta = {"seed": cfg.seed}
    train = ImageSet("shapes", train_x, train_y, CLASSES, mean, std, meta)
    test = ImageSet("shapes", test_x, test_y, CLASSES, mean, std, meta)
    return DatasetSplits(pretrain=train, train=train, test=test)


SHAPES_DATASET = DatasetSpec("shapes", load_shapes, needs_root=False, channels=3, size=SIZE,
                             summary="10 procedurally generated shape classes, 32 px, any size (no download)")

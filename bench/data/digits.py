"""``digits``: scikit-learn's bundled 8x8 handwritten digits, upsampled; the zero-download default."""

from __future__ import annotations

import torch

from bench.data.base import ImageSet, channel_stats, resize_images
from bench.data.spec import DatasetConfig, DatasetSpec, DatasetSplits

TEST_FRACTION = 0.2
SIZE = 32


def load_digits(cfg: DatasetConfig) -> DatasetSplits:
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    images = torch.from_numpy(data.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8)[:, None]
    images = resize_images(images, cfg.image_size or SIZE)
    labels = torch.from_numpy(data.target).long()
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(labels), generator=g)
    n_test = int(len(labels) * TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    mean, std = channel_stats(images[train_idx])
    classes = [str(d) for d in range(10)]
    train = ImageSet("digits", images[train_idx], labels[train_idx], classes, mean, std)
    test = ImageSet("digits", images[test_idx], labels[test_idx], classes, mean, std)
    return DatasetSplits(pretrain=train, train=train, test=test)


DIGITS_DATASET = DatasetSpec("digits", load_digits, needs_root=False, channels=1, size=SIZE,
                             summary="scikit-learn's 1797 8x8 digits, upsampled to 32 px (no download)")

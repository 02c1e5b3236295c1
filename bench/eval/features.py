"""Frozen features of a split, and top-k accuracy of class scores (shared by every protocol)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.cost import timed
from bench.data.augment import normalize
from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.loader import iter_batches
from bench.errors import DataError


@dataclass(frozen=True)
class Features:
    """Cached features (N, D) and labels (N,) of one labelled split, on the device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.numel()

    def subset(self, index: torch.Tensor) -> "Features":
        index = index.to(self.x.device)
        return Features(self.x[index], self.y[index])

    def cat(self, other: "Features") -> "Features":
        """These samples followed by ``other``'s (e.g. train followed by val: the final fit set)."""
        return Features(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]))


#: a fitted probe: raw features (N, D) -> class scores (N, K)
Classifier = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Choice:
    """What a probe chose on the validation split: its hyper-parameters (``{"lr": 0.3}``), its validation
    metrics (``{"top1": .., "top5": ..}``) and the classifier to score on test (refitted on train + val or not)."""

    params: dict[str, float]
    val: dict[str, float]
    classifier: Classifier


def standardizer(x: torch.Tensor, enabled: bool = True, dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    """Standardisation with the mean and std of ``x`` (the fit set), applied to any features in ``dtype``;
    only the cast when off."""
    if not enabled:
        return lambda f: f.to(dtype)
    x = x.to(dtype)
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    return lambda f: (f.to(dtype) - mean) / std


def score(classifier: Classifier, feats: Features, prefix: str, num_classes: int, chunk: int = 8192) -> dict[str, float]:
    """``{prefix.top1, prefix.top5}`` of ``classifier`` on ``feats``, ``chunk`` rows at a time."""
    check_labels(feats.y, num_classes, f"{prefix} features")
    correct = torch.zeros(2, dtype=torch.long, device=feats.x.device)
    with torch.no_grad():
        for start in range(0, len(feats), chunk):
            correct += topk_correct(classifier(feats.x[start : start + chunk]), feats.y[start : start + chunk], (1, 5))
    return accuracy_metrics(prefix, correct, len(feats), num_classes)


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], standardised with per-channel ``mean`` and ``std``."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return normalize(images.float().div_(255), m, s)


@torch.no_grad()
@timed("extract")
def extract_features(
    backbone: nn.Module, split: ImageSet | FolderSet, device: torch.device, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) of every image of ``split``, both on ``device``.

    The backbone runs in eval mode (BN statistics frozen) under bf16 autocast on CUDA; the train/eval
    mode of each of its modules is restored afterwards.
    """
    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    n = len(split)
    feats: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long, device=device)
    try:
        for images, y, index in iter_batches(split, batch_size, device):
            x = normalize_images(images, split.mean, split.std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                f = backbone(x)
            if feats is None:
                feats = torch.empty(n, f.shape[1], dtype=torch.float32, device=device)
            feats[index] = f.float()
            labels[index] = y
    finally:
        for m, mode in modes:
            m.training = mode
    if feats is None:
        raise DataError(f"{split.name}: the split holds no images; check the dataset root and split name")
    return feats, labels


def check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Refuse labels outside [0, num_classes) (e.g. -1 of an unlabeled split) with a clear message."""
    if labels.numel() == 0:
        raise DataError(f"{what}: no samples to evaluate on")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{what}: labels span [{lo}, {hi}] but evaluation needs labels in [0, {num_classes}); "
            "evaluate on a labeled split (ImageSet.labeled()) with the dataset's num_classes"
        )


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """How many rows rank their label within the ``k`` best scores, for each k (counts stay on the device).

    A label's rank is the number of classes scored strictly higher, so ties resolve in its favour and the
    result does not depend on a device's sort order; a label scored -inf (no kNN vote) is never a hit.
    """
    own = scores.gather(1, labels[:, None])
    rank = (scores > own).sum(dim=1)
    scored = own.squeeze(1) > -math.inf
    return torch.stack([((rank < k) & scored).sum() for k in ks])


def accuracy_metrics(prefix: str, correct: torch.Tensor, total: int, num_classes: int) -> dict[str, float]:
    """``{prefix.top1, prefix.top5}`` as fractions from counts of ``topk_correct(..., ks=(1, 5))``.

    Top-5 is reported only with more than 5 classes (otherwise it is trivially 1).
    """
    acc = (correct.double() / total).tolist()
    metrics = {f"{prefix}.top1": acc[0]}
    if num_classes > 5:
        metrics[f"{prefix}.top5"] = acc[1]
    return metrics

"""Evaluation speed: the linear probe on cached features against the full-network protocol, kNN, extraction.

The full-network protocol is solo-learn's: every step the frozen backbone embeds a freshly augmented
batch (random resized crop + flip) and the linear head takes one SGD step. Here it shares everything else
with our cached probe (``bench.eval.linear``): the head's initialisation, the order of the samples, the
optimiser, the cosine schedule and the standardisation with the clean training features' statistics.
So the two differ only in augmentation and in recomputing the features, and with an un-augmented view they
train on the same features.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bench.config.run import resolve_run_config
from bench.data.base import ImageSet
from bench.data.registry import load_dataset
from bench.data.views import ViewMaker, ViewSpec
from bench.eval.features import accuracy_metrics, extract_features, topk_correct
from bench.eval.knn import knn_eval
from bench.eval.linear import LinearConfig, linear_probe, train_linear_head
from bench.models.backbones import BackboneConfig
from bench.train.engine import train

T = TypeVar("T")

#: solo-learn's linear-evaluation augmentation
LINEAR_AUGMENT = ViewSpec(scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0)


class EvalSizes(BaseModel):
    """Sizes of the evaluation section (the probed backbone is pre-trained, supervised, on shapes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneConfig
    n_train: int = Field(ge=10, description="shapes training images of the probes")
    n_test: int = Field(ge=10)
    pretrain_epochs: int = Field(ge=1, description="supervised pre-training of the probed backbone")
    probe_epochs: int = Field(ge=1, description="epochs of both linear protocols")
    knn_train: int = Field(ge=200)
    knn_test: int = Field(ge=1)
    knn_dim: int = Field(ge=1)
    knn_classes: int = Field(ge=2)


QUICK_EVAL = EvalSizes(backbone=BackboneConfig(name="small_cnn"), n_train=1024, n_test=512, pretrain_epochs=2, probe_epochs=5,
                       knn_train=5_000, knn_test=1_000, knn_dim=512, knn_classes=10)
FULL_EVAL = EvalSizes(backbone=BackboneConfig(name="resnet18", cifar_stem=True), n_train=50_000, n_test=10_000, pretrain_epochs=5,
                      probe_epochs=100, knn_train=50_000, knn_test=10_000, knn_dim=512, knn_classes=100)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall-clock seconds of one call of ``fn``, device work included, and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, result


@torch.no_grad()
def _embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        return backbone(x).float()


def full_network_probe(backbone: nn.Module, train_split: ImageSet, test_split: ImageSet, num_classes: int, cfg: LinearConfig,
                       augment: ViewSpec, device: torch.device) -> dict[str, float]:
    """Linear head on the frozen backbone's features of ``augment``-ed images, recomputed every step.

    Returns ``{"full_network.top1", ...}`` on the clean test images. ``backbone`` is left in eval mode.
    """
    backbone.eval()
    train_f, train_y = extract_features(backbone, train_split, device)
    mean, std = (train_f.mean(dim=0), train_f.std(dim=0).clamp_min(1e-6)) if cfg.standardize else (0.0, 1.0)
    images = train_split.images.to(device)
    maker = ViewMaker([augment], train_split.mean, train_split.std, train_split.image_size, clean=False)
    view_gen = torch.Generator(device=device).manual_seed(cfg.seed)

    def batch_features(idx: torch.Tensor) -> torch.Tensor:
        return (_embed(backbone, maker(images[idx], train_y[idx], idx, view_gen).crops[0]) - mean) / std

    head = train_linear_head(batch_features, train_y, train_f.shape[1], num_classes, cfg)
    test_f, test_y = extract_features(backbone, test_split, device)
    with torch.no_grad():
        correct = topk_correct(head((test_f - mean) / std), test_y, (1, 5))
    return accuracy_metrics("full_network", correct, len(test_split), num_classes)


def compare_linear_protocols(backbone: nn.Module, train_split: ImageSet, test_split: ImageSet, num_classes: int, cfg: LinearConfig,
                             device: torch.device, augment: ViewSpec = LINEAR_AUGMENT) -> dict[str, float]:
    """Seconds and top-1 of both protocols (same epochs, lr and seed), the speed-up and the accuracy gap.

    The cached protocol's time is that of extracting the train and test features plus the probe's; the
    extraction alone also gives the feature-extraction throughput.
    """
    extract_s, ((train_f, train_y), (test_f, test_y)) = timed(
        lambda: (extract_features(backbone, train_split, device), extract_features(backbone, test_split, device)), device)
    probe_s, cached = timed(lambda: linear_probe(train_f, train_y, test_f, test_y, num_classes, cfg), device)
    full_s, full = timed(lambda: full_network_probe(backbone, train_split, test_split, num_classes, cfg, augment, device), device)
    cached_s = extract_s + probe_s
    return {"linear.cached_seconds": cached_s, "linear.full_network_seconds": full_s, "linear.speedup": full_s / cached_s,
            "linear.cached_top1": cached["linear.top1"], "linear.full_network_top1": full["full_network.top1"],
            "linear.top1_gap": abs(cached["linear.top1"] - full["full_network.top1"]), "linear.epochs": cfg.epochs,
            "extract.images_per_s": (len(train_split) + len(test_split)) / extract_s}


def knn_seconds(n_train: int, n_test: int, dim: int, classes: int, device: torch.device) -> dict[str, float]:
    """Median seconds of the weighted kNN (k = 20 and 200) over random-normal features of these sizes."""
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(n_train, dim, generator=g).to(device), torch.randn(n_test, dim, generator=g).to(device)
    train_y = torch.randint(classes, (n_train,), generator=g).to(device)
    test_y = torch.randint(classes, (n_test,), generator=g).to(device)

    def run() -> dict[str, float]:
        return knn_eval(train_f, train_y, test_f, test_y, classes, ks=(20, 200))

    run()  # warm-up
    seconds = statistics.median(timed(run, device)[0] for _ in range(3))
    return {"knn.seconds": seconds, "knn.n_train": n_train, "knn.n_test": n_test, "knn.dim": dim}


def measure_evaluation(sizes: EvalSizes, device: torch.device, scratch: Path) -> dict[str, float]:
    """Pre-train the probed backbone briefly, then time both linear protocols, kNN and feature extraction."""
    cfg = resolve_run_config({
        "method": {"name": "supervised"}, "dataset": {"name": "shapes", "n_train": sizes.n_train, "n_test": sizes.n_test},
        "backbone": sizes.backbone.model_dump(), "batch_size": 256, "epochs": sizes.pretrain_epochs,
        "train": {"device": device.type, "checkpoint_every": 0, "progress": False},
    })
    splits = load_dataset(cfg.dataset)
    backbone = train(cfg, scratch / "eval-pretrain", splits=splits).method.backbone
    train_split, test_split = splits.train.to(device), splits.test.to(device)  # resident, as the engine keeps its data
    figures = compare_linear_protocols(backbone, train_split, test_split, train_split.num_classes, LinearConfig(epochs=sizes.probe_epochs, lrs=[0.1]), device)
    figures["linear.n_train"], figures["linear.n_test"] = sizes.n_train, sizes.n_test
    figures.update(knn_seconds(sizes.knn_train, sizes.knn_test, sizes.knn_dim, sizes.knn_classes, device))
    return figures

"""The evaluations of one run, in the order a paper reports them.

Features are extracted once and every frozen-feature protocol (kNN, linear probe, label fractions,
diagnostics) reuses them; fine-tuning alone trains the backbone (a copy of it). Each further labeled set
of ``eval.datasets`` gets the frozen-feature protocols too, its metrics prefixed with its name.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.config.run import EvalConfig
from bench.data.base import ImageSet
from bench.data.registry import DatasetConfig, DatasetSplits, load_dataset
from bench.errors import ConfigError
from bench.eval.diagnostics import diagnose
from bench.eval.features import extract_features, normalize_images
from bench.eval.finetune import finetune
from bench.eval.fractions import class_balanced_subset
from bench.eval.knn import knn_eval
from bench.eval.linear import linear_probe


def evaluate_backbone(backbone: nn.Module, splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int,
                      extra: dict[str, DatasetSplits] | None = None) -> dict[str, float]:
    """Every evaluation listed in ``cfg`` for a trained (or random-init) backbone.

    ``extra`` holds the sets of ``cfg.datasets`` already loaded (see :func:`load_eval_datasets`); they are
    loaded here otherwise.
    """
    train = splits.train.labeled()
    train_f, train_y = extract_features(backbone, train, device)
    test_f, test_y = extract_features(backbone, splits.test, device)
    metrics = evaluate_features(train_f, train_y, test_f, test_y, splits.train.num_classes, cfg, seed)
    if cfg.diagnostics:
        metrics.update({f"diag.{k}": float(v) for k, v in diagnose(test_f).items()})
    if cfg.finetune is not None:
        metrics.update(finetune(backbone, train, splits.test, splits.train.num_classes, cfg.finetune, device))
    if extra is None:
        extra = load_eval_datasets(cfg.datasets, splits.train.channels)
    for name, other in extra.items():
        metrics.update({f"{name}.{key}": value for key, value in evaluate_on_dataset(backbone, other, cfg, device, seed).items()})
    return metrics


def load_eval_datasets(datasets: list[DatasetConfig], channels: int) -> dict[str, DatasetSplits]:
    """The further labeled sets by name, checked against the ``channels`` the backbone trains on.

    Called before pre-training, so a missing file or a grey set for an RGB backbone fails before hours of it.
    """
    loaded = {}
    for dataset in datasets:
        splits = load_dataset(dataset)
        if splits.train.channels != channels:
            raise ConfigError(f"eval.datasets: {dataset.name} has {splits.train.channels}-channel images but the backbone "
                              f"was pre-trained on {channels}-channel ones; evaluate on a set with {channels} channel(s)")
        loaded[dataset.name] = splits
    return loaded


def evaluate_on_dataset(backbone: nn.Module, splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int) -> dict[str, float]:
    """kNN, linear probe and label fractions of the frozen backbone on another labeled set (its train -> test)."""
    train_f, train_y = extract_features(backbone, splits.train.labeled(), device)
    test_f, test_y = extract_features(backbone, splits.test, device)
    return evaluate_features(train_f, train_y, test_f, test_y, splits.train.num_classes, cfg, seed)


def evaluate_features(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    cfg: EvalConfig,
    seed: int,
) -> dict[str, float]:
    """kNN, linear probe and label-fraction probes on cached features."""
    metrics: dict[str, float] = {}
    if cfg.knn:
        metrics.update(knn_eval(train_f, train_y, test_f, test_y, num_classes, ks=tuple(cfg.knn_k), temperature=cfg.knn_temperature))
    if cfg.linear is not None:
        metrics.update(linear_probe(train_f, train_y, test_f, test_y, num_classes, cfg.linear))
        for fraction in cfg.label_fractions:
            idx = class_balanced_subset(train_y.cpu(), fraction, seed).to(train_f.device)
            probe = linear_probe(train_f[idx], train_y[idx], test_f, test_y, num_classes, cfg.linear)
            tag = f"linear_{fraction * 100:g}pct"
            metrics.update({k.replace("linear", tag, 1): v for k, v in probe.items()})
    return metrics


def pixel_features(split: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised raw pixels, flattened: the 'no learning at all' baseline."""
    images = split.images.to(device)
    return normalize_images(images, split.mean, split.std).flatten(1), split.labels.to(device)


def evaluate_pixels(splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int) -> dict[str, float]:
    train_f, train_y = pixel_features(splits.train.labeled(), device)
    test_f, test_y = pixel_features(splits.test, device)
    return evaluate_features(train_f, train_y, test_f, test_y, splits.train.num_classes, cfg, seed)

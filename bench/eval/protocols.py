"""The evaluations of one run, in two phases: every choice on the validation split, then the test split, once.

Phase 1 (``select_on_val``) reads train and val only: the frozen backbone's features of both are extracted
once; kNN picks its k, each probe of ``eval.probes`` its hyper-parameters (logreg's C, the linear grid's lr and
wd), for all labels and for each label fraction (a class-balanced subset of train, never of val); the final fits
are made (on train + val for all labels, where the probe refits; on the subset alone for a label fraction).
Phase 2 (``score_on_test``) extracts the test features and scores every fitted probe and the kNN bank
(train + val) on them: the test split is read once, after every choice is frozen. Diagnostics and fine-tuning
(no choice to make) also run in phase 2. Each further labelled set of ``eval.datasets`` gets both phases too,
its metrics prefixed with its name.

Metric names say the split: test numbers are ``knn20.top1``, ``linear.top1``, ``logreg_1pct.top1``; validation
ones ``val.knn20.top1``, ``val.linear.top1``; choices ``linear.lr``, ``logreg.C``, ``knn.k`` (the selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bench.eval.config import EvalConfig
from bench.data.base import ImageSet
from bench.data.registry import DatasetConfig, DatasetSplits, load_dataset
from bench.errors import ConfigError
from bench.eval.diagnostics import diagnose
from bench.eval.features import Choice, Classifier, Features, extract_features, normalize_images, score
from bench.eval.finetune import finetune
from bench.eval.fractions import class_balanced_subset
from bench.eval.knn import knn_eval
from bench.eval.probes import ProbeInputs, select_probe
from bench.models.pixels import PixelFeatures

#: the split prefix of validation metrics: ``val.linear.top1``
VAL = "val"


@dataclass
class Selected:
    """Phase 1 of one labelled set: validation metrics, the choices, the fitted classifiers and the kNN bank."""

    num_classes: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    selection: dict[str, float] = field(default_factory=dict)
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    bank: Features | None = None
    test_reads: int = 0

    def add(self, tag: str, choice: Choice) -> None:
        """A probe's choice under its metric name (``linear``, ``logreg_1pct``)."""
        self.val_metrics.update({f"{VAL}.{tag}.{key}": value for key, value in choice.val.items()})
        self.selection.update({f"{tag}.{key}": value for key, value in choice.params.items()})
        self.classifiers[tag] = choice.classifier


@dataclass
class Evaluation:
    """Every metric of a cell (test and ``val.*``), its choices made on val, and how often each test split was read."""

    metrics: dict[str, float]
    selection: dict[str, float]
    test_reads: int


def evaluate_backbone(backbone: nn.Module, splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int,
                      extra: dict[str, DatasetSplits] | None = None) -> Evaluation:
    """Every evaluation listed in ``cfg`` for a trained (or random-init) backbone: phase 1 on every set, then phase 2.

    ``extra`` holds the sets of ``cfg.datasets`` already loaded (see :func:`load_eval_datasets`); they are
    loaded here otherwise.
    """
    if extra is None:
        extra = load_eval_datasets(cfg.datasets, splits.train.channels)
    sets = {"": splits, **extra}
    chosen = {name: select_on_val(backbone, s, cfg, device, seed) for name, s in sets.items()}
    metrics: dict[str, float] = {}
    selection: dict[str, float] = {}
    for name, s in sets.items():
        prefix = f"{name}." if name else ""
        test = Features(*extract_features(backbone, s.test, device))
        found = score_on_test(chosen[name], test, cfg)
        if not name:
            if cfg.diagnostics:
                found.update({f"diag.{k}": float(v) for k, v in diagnose(test.x).items()})
            if cfg.finetune is not None:
                found.update(finetune(backbone, s.train.labeled(), s.test, s.train.num_classes, cfg.finetune, device))
        metrics.update({f"{prefix}{key}": value for key, value in found.items()})
        metrics.update({f"{VAL}.{prefix}{key.removeprefix(VAL + '.')}": v for key, v in chosen[name].val_metrics.items()})
        selection.update({f"{prefix}{key}": value for key, value in chosen[name].selection.items()})
    return Evaluation(metrics, selection, test_reads=max(s.test_reads for s in chosen.values()))


def evaluate_pixels(splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int,
                    extra: dict[str, DatasetSplits] | None = None, *, size: int | None = None) -> Evaluation:
    """The raw-pixel baseline: every evaluation of ``cfg`` on the normalised, flattened pixels (``PixelFeatures`` as
    the backbone), average-pooled to ``size`` px first when the images are larger."""
    shape = (splits.train.channels, splits.train.image_size, splits.train.image_size)
    return evaluate_backbone(PixelFeatures(shape, size), splits, cfg, device, seed, extra)


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


def select_on_val(backbone: nn.Module, splits: DatasetSplits, cfg: EvalConfig, device: torch.device, seed: int) -> Selected:
    """Phase 1 of one labelled set: features of train and val, every choice on val, the final fits. Reads no test."""
    if splits.val is None:
        raise ConfigError(f"dataset {splits.train.name} has no validation split; load it with load_dataset")
    images = splits.train.labeled()
    train = Features(*extract_features(backbone, images, device))
    val = Features(*extract_features(backbone, splits.val.labeled(), device))
    return select_features(ProbeInputs(train, val, splits.train.num_classes, images, backbone, device), cfg, seed)


def select_features(data: ProbeInputs, cfg: EvalConfig, seed: int) -> Selected:
    """kNN's k and each probe's hyper-parameters chosen on ``data.val``; the classifiers fitted for phase 2."""
    selected = Selected(data.num_classes)
    train_val = data.train.cat(data.val)
    if cfg.knn:
        val_knn = knn_eval(data.train.x, data.train.y, data.val.x, data.val.y, data.num_classes, ks=tuple(cfg.knn_k),
                           temperature=cfg.knn_temperature)
        k = max(cfg.knn_k, key=lambda k: (val_knn[f"knn{k}.top1"], -k))  # ties: the smaller k
        selected.val_metrics.update({f"{VAL}.{key}": value for key, value in (val_knn | chosen_k(val_knn, k, cfg.knn_k)).items()})
        selected.selection.update({"knn.k": k, "knn.t": cfg.knn_temperature})
        selected.bank = train_val
    for probe in cfg.probes:
        selected.add(probe.name, select_probe(probe, data, train_val))
        for fraction in cfg.label_fractions:
            index = class_balanced_subset(data.train.y, fraction, seed)
            selected.add(f"{probe.name}_{fraction * 100:g}pct", select_probe(probe, data.subset(index), None))
    return selected


def score_on_test(selected: Selected, test: Features, cfg: EvalConfig) -> dict[str, float]:
    """Phase 2 of one labelled set: the kNN bank (train + val) and every fitted probe scored on the test features."""
    if selected.test_reads:
        raise RuntimeError("this set's test split was already scored; phase 2 reads it once per cell")
    selected.test_reads += 1
    metrics: dict[str, float] = {}
    if selected.bank is not None:
        metrics.update(knn_eval(selected.bank.x, selected.bank.y, test.x, test.y, selected.num_classes, ks=tuple(cfg.knn_k),
                                temperature=cfg.knn_temperature))
        metrics.update(chosen_k(metrics, int(selected.selection["knn.k"]), cfg.knn_k))
    for tag, classifier in selected.classifiers.items():
        metrics.update(score(classifier, test, tag, selected.num_classes))
    return metrics


def chosen_k(knn: dict[str, float], k: int, ks: list[int]) -> dict[str, float]:
    """``knn.top1`` (and top-5): the kNN metrics of the k chosen on validation among several ``ks``, from
    ``knn_eval``'s ``knn{k}.*``; nothing when there was no choice (one k)."""
    if len(ks) < 2:
        return {}
    return {f"knn.{key.split('.', 1)[1]}": value for key, value in knn.items() if key.startswith(f"knn{k}.")}


def pixel_features(split: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised raw pixels, flattened: the 'no learning at all' baseline."""
    images = split.images.to(device)
    return normalize_images(images, split.mean, split.std).flatten(1), split.labels.to(device)

"""Linear probe on cached frozen features: a grid of heads trained at once, the lr (and wd) chosen on validation.

DINOv2's multi-head probe (``dinov2/eval/linear.py``) on ssl-bench's cached features: one head per (lr, weight
decay) of the grid (``bench.eval.heads``), SGD with momentum 0.9, cosine to 0 over all steps, 100 epochs of
batch 256, features standardised with the fit set's mean and std. The head with the best validation top-1 is
chosen (ties: the smaller lr); with ``refit`` (default) that (lr, wd) is trained again on train + val, the whole
labelled training split as published probes use it, and scored on test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field
from torch import nn

from bench.core.cost import timed
from bench.data.loader import epoch_permutation
from bench.errors import ConfigError
from bench.eval.features import Choice, Features, check_labels, score, standardizer, topk_correct
from bench.eval.heads import EpochBatches, HeadRecipe, LinearHeads, train_heads
from bench.schema import ConfigModel

#: DINOv2's 13 learning rates (``dinov2/eval/linear.py``) and solo-learn's per-method range, at batch 256
DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
SOLO_LEARN_LRS = (0.3, 1.0, 3.0, 10.0, 30.0)
REFERENCE_BATCH = 256


def positive_grid(values: list[float], what: str) -> list[float]:
    """A non-empty list of distinct positive values (lrs), or of non-negative ones (weight decays)."""
    if not values or len(set(values)) != len(values):
        raise ValueError(f"give a non-empty list of distinct {what}")
    if any(not math.isfinite(v) or v < 0 or (what == "learning rates" and v == 0) for v in values):
        raise ValueError(f"{what} must be finite and {'> 0' if what == 'learning rates' else '>= 0'}")
    return values


#: a probe's learning-rate grid and weight-decay grid, validated as ``positive_grid`` says
LrGrid = Annotated[list[float], AfterValidator(lambda v: positive_grid(v, "learning rates"))]
WdGrid = Annotated[list[float], AfterValidator(lambda v: positive_grid(v, "weight decays"))]


def scaled_grid(lrs: list[float], weight_decays: list[float], batch: int) -> list[tuple[float, float]]:
    """(lr, weight decay) of every head, each base lr (at batch 256) scaled linearly to ``batch``; lr-major."""
    return [(lr * batch / REFERENCE_BATCH, wd) for lr in lrs for wd in weight_decays]


class LinearConfig(ConfigModel):
    """The cached-feature probe: ``lrs`` x ``weight_decays`` heads at once (defaults: DINOv2 + solo-learn, 18 heads)."""

    name: Literal["linear"] = "linear"
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lrs: LrGrid = Field(default_factory=lambda: [*DINOV2_LRS, *SOLO_LEARN_LRS],
                             description="peak lrs at batch 256, scaled by the batch used / 256; cosine-decayed to 0")
    weight_decays: WdGrid = Field(default_factory=lambda: [0.0], description="crossed with lrs")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    standardize: bool = Field(True, description="standardise features with the fit set's mean and std")
    refit: bool = Field(True, description="train the chosen (lr, wd) again on train + val for the test number; "
                        "false scores the head chosen on val (DINOv2)")
    seed: int = 0

    def grid(self, n: int) -> list[tuple[float, float]]:
        """(lr, weight decay) of every head for ``n`` training samples: each lr scaled by the batch used,
        ``min(batch_size, n)`` / 256; lr-major, in the order given."""
        return scaled_grid(self.lrs, self.weight_decays, min(self.batch_size, n))

    def recipe(self) -> HeadRecipe:
        return HeadRecipe(epochs=self.epochs, optimizer=self.optimizer, momentum=self.momentum, seed=self.seed)


def index_batches(batch_features: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, batch_size: int,
                  seed: int) -> tuple[EpochBatches, int]:
    """Epochs of ``(batch_features(idx), labels[idx])`` in a seeded order (``epoch_permutation``); and steps per epoch."""
    n = labels.shape[0]
    batch_size = min(batch_size, n)
    steps = math.ceil(n / batch_size)

    def batches(epoch: int):
        order = epoch_permutation(n, seed, epoch).to(labels.device)
        for b in range(steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield batch_features(idx), labels[idx]

    return batches, steps


def fit_heads(feats: Features, num_classes: int, grid: Sequence[tuple[float, float]],
              cfg: LinearConfig) -> tuple[LinearHeads, Callable[[torch.Tensor], torch.Tensor]]:
    """The heads of ``grid`` trained on ``feats``, and the standardisation they expect."""
    check_labels(feats.y, num_classes, "linear-probe training features")
    standardize = standardizer(feats.x, cfg.standardize)
    x = standardize(feats.x)
    batches, steps = index_batches(lambda idx: x[idx], feats.y, cfg.batch_size, cfg.seed)
    return train_heads(batches, steps, x.shape[1], num_classes, grid, cfg.recipe(), x.device), standardize


def head_accuracy(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(G, 2) top-1 and top-5 accuracy of every head on the (transformed) features ``x``."""
    correct = torch.zeros(len(heads.weights), 2, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            logits = heads(x[start : start + chunk])
            labels = y[start : start + chunk]
            correct += torch.stack([topk_correct(head_logits, labels, (1, 5)) for head_logits in logits])
    return correct.double() / x.shape[0]


def pick_head(heads: LinearHeads, accuracy: torch.Tensor, what: str) -> int:
    """The finite head with the best validation top-1 (ties: the first in grid order)."""
    if not bool(heads.finite.any()):
        raise ConfigError(f"{what}: the loss of every head turned non-finite; lower the probe's lrs")
    top1 = torch.where(heads.finite, accuracy[:, 0], torch.full_like(accuracy[:, 0], -1.0))
    return int(top1.argmax())


def val_metrics(accuracy: torch.Tensor, num_classes: int) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` of one head's accuracy row (top-5 only with more than 5 classes)."""
    return {"top1": float(accuracy[0]), **({"top5": float(accuracy[1])} if num_classes > 5 else {})}


@timed("linear")
def select_linear(train: Features, val: Features, num_classes: int, cfg: LinearConfig, refit_on: Features | None) -> Choice:
    """Train the grid on ``train``, choose the head by validation top-1, refit it on ``refit_on`` (when given)."""
    grid = cfg.grid(len(train))
    heads, standardize = fit_heads(train, num_classes, grid, cfg)
    accuracy = head_accuracy(heads, standardize(val.x), val.y)
    g = pick_head(heads, accuracy, "linear probe")
    lr, wd = grid[g]
    classifier = _composed(heads.head(g), standardize)
    if refit_on is not None:
        refitted, refit_standardize = fit_heads(refit_on, num_classes, [grid[g]], cfg)
        classifier = _composed(refitted.head(0), refit_standardize)
    return Choice({"lr": lr, "wd": wd}, val_metrics(accuracy[g], num_classes), classifier)


def _composed(head: nn.Module, standardize: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda f: head(standardize(f))


def train_linear_head(batch_features: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, in_dim: int,
                      num_classes: int, cfg: LinearConfig) -> nn.Module:
    """One head of a one-point grid (one lr, one weight decay) on ``batch_features(idx)`` of each batch ``idx``.

    Deterministic: N(0, 0.01) initialisation and the epoch orders come from ``cfg.seed``.
    """
    grid = cfg.grid(labels.shape[0])
    if len(grid) != 1:
        raise ConfigError(f"one linear head needs one lr and one weight decay; got {len(grid)} (lrs x weight_decays)")
    batches, steps = index_batches(batch_features, labels, cfg.batch_size, cfg.seed)
    return train_heads(batches, steps, in_dim, num_classes, grid, cfg.recipe(), labels.device).head(0)


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, cfg: LinearConfig) -> dict[str, float]:
    """One (lr, wd) trained on the train features and scored on the test ones, without selection:
    ``{"linear.top1", "linear.top5"}`` (the cached protocol ``ssl-bench perf`` sets against the full-network one)."""
    check_labels(train_y, num_classes, "linear-probe training features")
    standardize = standardizer(train_f, cfg.standardize)
    x = standardize(train_f)
    head = train_linear_head(lambda idx: x[idx], train_y, x.shape[1], num_classes, cfg)
    return score(_composed(head, standardize), Features(test_f, test_y), "linear", num_classes)

"""A grid of linear heads trained at once on the same batches, each with its own lr and weight decay.

DINOv2's multi-head probe (``dinov2/eval/linear.py``): every head sees the same features of every batch, so a
grid of 18 learning rates costs one pass over the data. The loss is the sum of the heads' mean cross-entropies;
each head gets exactly the gradient it would get alone, and its own optimizer parameter group, so a head of the
grid trains exactly as a single head with the same lr, weight decay and seed. All heads start from one
N(0, 0.01) draw with zero bias. A head whose loss turns non-finite is marked (``LinearHeads.finite``) and left
out of any selection; it never affects the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.lars import LARS

#: lr schedules of the probes: cosine per step after a linear warm-up (DINOv2, lightly, MAE), cosine per epoch
#: (MoCo v3 ``main_lincls.py``), step decay x0.1 at fractions of the epochs (solo-learn: 60 and 80 of 100)
Schedule = Literal["cosine", "cosine_epoch", "step"]
Optimizer = Literal["sgd", "adam", "lars"]

#: batches of one epoch: (features (B, D) float32, labels (B,)) on the heads' device
EpochBatches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class HeadRecipe:
    """How a grid of heads trains: epochs, optimizer, schedule, seed, and MAE's BatchNorm before the heads."""

    epochs: int
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    schedule: Schedule = "cosine"
    warmup_epochs: int = 0
    milestones: tuple[float, ...] = ()
    batch_norm: bool = False
    seed: int = 0


class LinearHeads(nn.Module):
    """G linear classifiers over the same D features: ``forward`` gives (G, B, K) logits.

    With ``batch_norm``, the features first pass BatchNorm1d(affine=False, eps=1e-6), shared by every head
    (MAE's ``main_linprobe.py``; without parameters it is the same for each head).
    """

    def __init__(self, count: int, in_dim: int, num_classes: int, seed: int, batch_norm: bool = False):
        super().__init__()
        start = torch.randn(num_classes, in_dim, generator=torch.Generator().manual_seed(seed)) * 0.01
        self.weights = nn.ParameterList([nn.Parameter(start.clone()) for _ in range(count)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(num_classes)) for _ in range(count)])
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if batch_norm else nn.Identity()
        self.register_buffer("finite", torch.ones(count, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return torch.einsum("bd,gkd->gbk", x, torch.stack(list(self.weights))) + torch.stack(list(self.biases))[:, None]

    def head(self, g: int) -> nn.Module:
        """Head ``g`` alone, as a module mapping (B, D) features to (B, K) logits."""
        linear = nn.Linear(self.weights[g].shape[1], self.weights[g].shape[0]).to(self.weights[g].device)
        with torch.no_grad():
            linear.weight.copy_(self.weights[g])
            linear.bias.copy_(self.biases[g])
        return nn.Sequential(self.norm, linear).eval()


def lr_factor(recipe: HeadRecipe, step: int, total: int, steps_per_epoch: int) -> float:
    """The multiplier of each head's peak lr at ``step`` (0-based) of ``total``."""
    epoch = step / steps_per_epoch
    if epoch < recipe.warmup_epochs:
        return epoch / recipe.warmup_epochs  # MAE's util/lr_sched.py: linear from 0, per step
    if recipe.schedule == "step":
        return 0.1 ** sum(step >= round(m * total) for m in recipe.milestones)
    if recipe.schedule == "cosine_epoch":
        return 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / recipe.epochs))
    warm = recipe.warmup_epochs * steps_per_epoch
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def build_head_optimizer(heads: LinearHeads, grid: Sequence[tuple[float, float]], recipe: HeadRecipe) -> torch.optim.Optimizer:
    """One parameter group per head for its weight (lr, weight decay) and one for its bias (same lr, no decay).

    LARS adapts the weights only (MAE's LARS leaves 1-d parameters out), as ``bench.train.optim`` does.
    """
    groups = []
    for (lr, wd), weight, bias in zip(grid, heads.weights, heads.biases, strict=True):
        groups.append({"params": [weight], "lr": lr, "weight_decay": wd, "lars_exclude": False})
        groups.append({"params": [bias], "lr": lr, "weight_decay": 0.0, "lars_exclude": True})
    if recipe.optimizer == "lars":
        return LARS(groups, lr=grid[0][0], momentum=recipe.momentum)
    for group in groups:
        group.pop("lars_exclude")
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=grid[0][0], momentum=recipe.momentum)
    return torch.optim.Adam(groups, lr=grid[0][0])


def train_heads(batches: EpochBatches, steps_per_epoch: int, in_dim: int, num_classes: int,
                grid: Sequence[tuple[float, float]], recipe: HeadRecipe, device: torch.device) -> LinearHeads:
    """Train one head per (lr, weight decay) of ``grid`` on ``batches(epoch)`` for ``recipe.epochs`` epochs.

    The loop never waits on the host: non-finite losses are recorded on the device in ``finite``.
    """
    heads = LinearHeads(len(grid), in_dim, num_classes, recipe.seed, recipe.batch_norm).to(device)
    opt = build_head_optimizer(heads, grid, recipe)
    peaks = [group["lr"] for group in opt.param_groups]
    total = recipe.epochs * steps_per_epoch
    step = 0
    heads.train()
    for epoch in range(recipe.epochs):
        for x, y in batches(epoch):
            factor = lr_factor(recipe, step, total, steps_per_epoch)
            for group, peak in zip(opt.param_groups, peaks):
                group["lr"] = peak * factor
            logits = heads(x)  # (G, B, K)
            losses = F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1), reduction="none").mean(dim=1)
            heads.finite &= torch.isfinite(losses)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            step += 1
    return heads.eval()

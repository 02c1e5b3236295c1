"""Linear probe: a linear classifier trained on cached frozen features, which stay on the device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.cost import timed
from bench.eval.features import accuracy_metrics, check_labels, topk_correct
from bench.schema import ConfigModel


class LinearConfig(ConfigModel):
    """Linear-probe hyper-parameters (defaults: 100 epochs, SGD momentum 0.9, no weight decay, cosine)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate, cosine-decayed to 0 over all steps")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.0, ge=0)
    standardize: bool = Field(True, description="standardise features with the training mean and std")
    seed: int = 0


@timed("linear")
def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    cfg: LinearConfig,
    chunk: int = 8192,
) -> dict[str, float]:
    """Train ``nn.Linear`` on (train_f, train_y); return ``{"linear.top1", "linear.top5"}`` on the test set.

    Training is deterministic for a given seed: the head is initialised N(0, 0.01) with zero bias and the
    epochs are shuffled by a seeded CPU generator. Top-5 is reported only with more than 5 classes.
    """
    check_labels(train_y, num_classes, "linear-probe training features")
    check_labels(test_y, num_classes, "linear-probe test features")
    device = train_f.device
    train_f = train_f.float()
    mean, std = (train_f.mean(dim=0), train_f.std(dim=0).clamp_min(1e-6)) if cfg.standardize else (0.0, 1.0)
    x = (train_f - mean) / std

    head = train_linear_head(lambda idx: x[idx], train_y, x.shape[1], num_classes, cfg)

    correct = torch.zeros(2, dtype=torch.long, device=device)
    with torch.no_grad():
        for start in range(0, test_f.shape[0], chunk):
            logits = head((test_f[start : start + chunk].float() - mean) / std)
            correct += topk_correct(logits, test_y[start : start + chunk], (1, 5))
    return accuracy_metrics("linear", correct, test_f.shape[0], num_classes)


def train_linear_head(batch_features: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor, in_dim: int,
                      num_classes: int, cfg: LinearConfig) -> nn.Linear:
    """Train ``nn.Linear`` on ``batch_features(idx)``, the features of the samples ``idx`` of each batch.

    The head is initialised N(0, 0.01) with zero bias, the epochs are shuffled by a CPU generator seeded
    with ``cfg.seed`` and the lr decays on a cosine over all steps, so training is deterministic.
    """
    device = labels.device
    g = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    head = head.to(device)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = labels.shape[0]
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g).to(device)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(head(batch_features(idx)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head

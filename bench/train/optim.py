"""Optimizers (SGD, LARS, Adam, AdamW) with the parameter groups SSL papers use.

Biases and normalisation parameters (any parameter with ndim <= 1) can be excluded from weight
decay and from LARS adaptation. The learning rate is given at a reference batch size and scaled by
an explicit, logged rule (linear or square root), never silently; the batch is the global one, summed
over the processes of a distributed run.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from bench.schema import FROM_YAML, ConfigModel
from bench.lars import LARS



class OptimizerConfig(ConfigModel):
    name: Literal["sgd", "lars", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="base learning rate at reference_batch")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr = base * rule(batch / reference_batch), batch the global batch over all processes"
    )
    reference_batch: int = Field(256, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: Annotated[tuple[float, float], FROM_YAML] = (0.9, 0.999)
    exclude_bias_bn: bool = Field(True, description="no weight decay (and no LARS adaptation) on biases and norm parameters")
    lars_eta: float = Field(0.001, gt=0, description="LARS trust coefficient")

    def scaled_lr(self, batch_size: int) -> float:
        """The peak lr for the global ``batch_size`` (summed over all processes of a distributed run)."""
        ratio = batch_size / self.reference_batch
        factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]
        return self.lr * factor


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Trainable parameters split into decayed and non-decayed groups."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.exclude_bias_bn and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lars_exclude": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, batch_size: int) -> torch.optim.Optimizer:
    """The optimizer of ``model``'s trainable parameters at the lr scaled for the global ``batch_size``."""
    lr = cfg.scaled_lr(batch_size)
    groups = param_groups(model, cfg)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_exclude")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)

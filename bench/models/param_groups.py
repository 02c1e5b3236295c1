"""Optimizer parameter groups: which parameters are decayed, and per-group learning-rate settings.

A group is a typed record the optimizer builder turns into a torch parameter group. The default rule (used by
every method unless it overrides ``Method.param_groups``) takes weight decay off biases and normalisation
parameters (``ndim <= 1``) and off the tokens a backbone lists in ``no_weight_decay_names()`` (a ViT's position
embedding and class token). Methods add per-group learning-rate scales (Barlow Twins' bias lr), fixed learning
rates (SimSiam's predictor) and backbones add layer-wise scales (ViT fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn


class DecayRules(Protocol):
    """What the grouping needs from the optimizer config (bench.train.optim.OptimizerConfig satisfies it)."""

    weight_decay: float
    exclude_bias_bn: bool
    exclude_tokens: bool


@dataclass
class ParamGroup:
    """Parameters trained with one setting: weight decay, lr as a multiple of the run's lr, fixed or scheduled."""

    params: list[nn.Parameter] = field(default_factory=list)
    weight_decay: float = 0.0
    lr_scale: float = 1.0
    fixed_lr: bool = False  #: keep the peak lr (no warm-up, no decay), e.g. SimSiam's predictor
    lars_exclude: bool = False  #: biases and norms: no LARS trust-ratio adaptation


def _one(name: str, p: nn.Parameter) -> float:
    return 1.0


def no_decay_names(module: nn.Module) -> set[str]:
    """Full names (relative to ``module``) of the parameters its submodules list in ``no_weight_decay_names()``."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if hasattr(sub, "no_weight_decay_names"):
            names |= {f"{prefix}.{n}" if prefix else n for n in sub.no_weight_decay_names()}
    return names


def split_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    rules: DecayRules,
    no_decay: set[str] = frozenset(),
    lr_scale: Callable[[str, nn.Parameter], float] = _one,
    fixed_lr: bool = False,
) -> list[ParamGroup]:
    """The trainable parameters of ``named``, grouped by (lr scale, decayed or not); decayed groups first.

    Not decayed: biases and norms (``ndim <= 1``) under ``rules.exclude_bias_bn``, and the names in ``no_decay``
    under ``rules.exclude_tokens``.
    """
    buckets: dict[tuple[float, bool, bool], list[nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        bias_or_norm = rules.exclude_bias_bn and p.ndim <= 1
        token = rules.exclude_tokens and name in no_decay
        buckets.setdefault((lr_scale(name, p), bias_or_norm or token, bias_or_norm), []).append(p)
    groups = [ParamGroup(params, 0.0 if excluded else rules.weight_decay, scale, fixed_lr, lars_exclude)
              for (scale, excluded, lars_exclude), params in buckets.items()]
    return sorted(groups, key=lambda g: g.weight_decay == 0.0)


def default_groups(module: nn.Module, rules: DecayRules) -> list[ParamGroup]:
    """The default rule over every trainable parameter of ``module``."""
    return split_groups(module.named_parameters(), rules, no_decay_names(module))

"""Optimizers (SGD, LARS, Adam, AdamW) with the parameter groups SSL papers use, and what changes per step.

Biases and normalisation parameters (any parameter with ndim <= 1) can be excluded from weight
decay and from LARS adaptation, and a ViT's position embedding and class token from weight decay; a
method shapes its groups through ``Method.param_groups`` (bench.models.param_groups). The learning rate
is given at a reference batch size and scaled by an explicit, logged rule (linear or square root), never
silently; the batch is the global one, summed over the processes of a distributed run. Each step the
engine sets every group's lr from the schedule (``schedule_groups``), the weight decay from its cosine
schedule (DINO) when one is set, and takes one ``optimisation_step``: backward, gradient averaging over the
ranks, clipping (``clip_gradients``: the global norm, or each parameter's own norm as DINO does) and the update.
The detection fine-tuning loop (bench/transfer/torchvision_det.py) takes the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from bench.lars import LARS
from bench.models.param_groups import ParamGroup, default_groups
from bench.config.optim import OptimizerConfig, ScheduleConfig
from bench.train.distributed import average_gradients
from bench.train.schedule import cosine_value, lr_factor

ClipMode = Literal["global", "per_param"]


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Trainable parameters as torch parameter groups: the model's own ``param_groups(cfg)`` (a method's), else
    the default rule (bench.models.param_groups); decayed groups first."""
    groups: list[ParamGroup] = model.param_groups(cfg) if hasattr(model, "param_groups") else default_groups(model, cfg)
    return [{"params": g.params, "weight_decay": g.weight_decay, "lars_exclude": g.lars_exclude, "lr_scale": g.lr_scale,
             "fixed_lr": g.fixed_lr} for g in groups if g.params]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, batch_size: int) -> torch.optim.Optimizer:
    """The optimizer of ``model``'s trainable parameters at the lr scaled for the global ``batch_size``.

    Each group keeps its ``peak_lr`` (the scaled lr times its ``lr_scale``) for ``schedule_groups``.
    """
    lr = cfg.scaled_lr(batch_size)
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = g["peak_lr"] = lr * g.pop("lr_scale")
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_exclude")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


def schedule_groups(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, schedule: ScheduleConfig, step: int,
                    total_steps: int, steps_per_epoch: int) -> None:
    """Set each group's lr (warm-up and decay of its peak, unless fixed) and, with ``weight_decay_end``, the
    weight decay of the decayed groups for ``step``."""
    factor = lr_factor(schedule, step, total_steps, steps_per_epoch)
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = group["peak_lr"] * factor
        if cfg.weight_decay_end is not None and group["weight_decay"] > 0:
            group["weight_decay"] = cosine_value(cfg.weight_decay, cfg.weight_decay_end, step, total_steps)


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], *,
                      clip: float | None, clip_mode: ClipMode, world: int,
                      before_update: Callable[[], None] | None = None) -> None:
    """One update of ``params`` from ``loss``: zero the gradients, backward, average them over the ``world`` ranks,
    clip them to norm ``clip`` (None: no clipping) and step ``optimizer``; nothing is read on the host.

    ``before_update`` runs once the gradients are final, just before the optimizer changes the parameters (the
    detection loop ends its SIGTERM-abortable region there, bench/transfer/interrupt.py)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = list(params)
    if world > 1:
        average_gradients(params)
    if clip:
        clip_gradients(params, clip, clip_mode)
    if before_update is not None:
        before_update()
    optimizer.step()


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float, mode: ClipMode) -> None:
    """Rescale gradients to norm <= ``max_norm``: all of them together (``global``), or each parameter's own
    gradient (``per_param``, DINO's ``clip_gradients``); no host synchronisation."""
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms])

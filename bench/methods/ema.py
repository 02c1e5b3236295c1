"""Exponential-moving-average targets: the cosine momentum schedule, the (online, target) pair a method declares and
the in-place update.

Shared by every method with a momentum (teacher / target / key) network: BYOL, MoCo v2, MoCo v3, DINO and MVEB
declare their pairs (``Method.ema_pairs``); ``Method.on_step_end`` updates them after each optimizer step.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from timm.layers import DropPath
from torch import nn


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule tau = 1 - (1 - base) * (cos(pi k / K) + 1) / 2.

    ``step`` counts optimizer steps from 0 to ``total_steps - 1``; tau equals ``base`` at step 0
    and exactly 1.0 at the last step (K = total_steps - 1).
    """
    progress = step / max(total_steps - 1, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class EmaPair(NamedTuple):
    """A module trained by the optimizer and its EMA target, a ``frozen_copy`` of it."""

    online: nn.Module
    target: nn.Module


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that the optimizer never updates: the EMA target / teacher / key encoder.

    Stochastic depth is off in the copy: DINO builds its teacher without drop path (``main_dino.py``).
    """
    copied = copy.deepcopy(module).requires_grad_(False)
    for m in copied.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0
    return copied


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In place: target_param <- tau * target_param + (1 - tau) * online_param; buffers are copied.

    ``target`` must be a structural copy of ``online`` (e.g. ``frozen_copy``), so their parameters
    and buffers pair up in order.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if target_params:
        # lerp(t, o, w) = t + w (o - t) = (1 - w) t + w o, with w = 1 - tau
        torch._foreach_lerp_(target_params, online_params, 1.0 - tau)
    target_buffers = list(target.buffers())
    if target_buffers:
        torch._foreach_copy_(target_buffers, list(online.buffers()))

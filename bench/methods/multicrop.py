"""Multi-crop plumbing shared by the methods that train on 2 global + k local crops (SwAV, DINO)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from bench.errors import ConfigError


def check_global_crops(method: str, n_crops: int, global_crops: int) -> None:
    """Raise ConfigError unless there are at least two crops and ``global_crops`` of them."""
    if n_crops < max(2, global_crops):
        raise ConfigError(
            f"{method}: the view recipe gives {n_crops} crop(s) but at least 2 are needed, the first "
            f"method.global_crops={global_crops} of them global; use augment 'multicrop' or lower method.global_crops"
        )


def multicrop_forward(net: Callable[[torch.Tensor], torch.Tensor], crops: list[torch.Tensor]) -> torch.Tensor:
    """``net`` of every crop, stacked as (V, B, D); consecutive crops of one resolution go through as one batch."""
    outs: list[torch.Tensor] = []
    for _, same_size in itertools.groupby(crops, key=lambda crop: crop.shape):
        group = list(same_size)
        outs.extend(net(torch.cat(group)).chunk(len(group)))
    return torch.stack(outs)


def crop_pair_cross_entropy(targets: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Mean over crop pairs (i, v), v != i, of the batch-mean cross-entropy of targets (G, B, K) and log_probs (V, B, K).

    Target i and prediction v of the same index come from the same crop (targets are the first G crops).
    """
    g, batch, _ = targets.shape
    ce = -torch.einsum("ibk,vbk->iv", targets, log_probs) / batch  # -sum_k t_i^(k) log p_v^(k), batch mean
    pairs = torch.arange(g, device=ce.device)[:, None] != torch.arange(log_probs.shape[0], device=ce.device)[None]
    return ce[pairs].mean()

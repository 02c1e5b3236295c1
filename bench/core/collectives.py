"""Collectives every layer may call: the rank and world size of the process group, a differentiable gather and
reductions. Without a process group (one process) each is the identity, so the one-process path costs nothing.

Methods gather what their loss needs over the whole batch with ``gather_with_grad``: the loss is then the same on
every rank, and its backward hands each rank the gradient summed over the ranks' copies of the loss (the training
loop's ``average_gradients`` divides by the world size). Starting processes and synchronised batch norm are the
training room's (``bench.train.distributed``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes training this run (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's index in the group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints and reports."""
    return rank() == 0


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        summed = grad.contiguous().clone()
        dist.all_reduce(summed)  # every rank's copy of the loss depends on this rank's slice
        return summed.chunk(dist.get_world_size(), ctx.dim)[dist.get_rank()], None


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (the global batch); ``x`` itself without a group.

    Differentiable: the backward gives each rank its slice of the gradient summed over the ranks. All ranks
    must pass tensors of the same shape.
    """
    return _Gather.apply(x, dim) if is_distributed() else x


def all_reduce(x: torch.Tensor, op: Literal["sum", "mean", "max"] = "sum") -> torch.Tensor:
    """The sum, mean or maximum of ``x`` over the ranks, as a new tensor (no gradient); ``x`` without a group."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return out / dist.get_world_size() if op == "mean" else out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any of them (a decision all ranks must share); ``device``: the training device."""
    if not is_distributed():
        return flag
    return bool(all_reduce(torch.tensor(float(flag), device=device), "max"))

"""Several processes training one run with torch.distributed (nccl on CUDA, gloo on CPU).

Every process holds a full copy of the method and a contiguous share of each global batch. Losses that
need the whole batch gather it with ``gather_with_grad`` and compute the one-process loss on it, so the
loss is the same on every rank; its backward hands each rank the gradient summed over the ranks' copies
of the loss, and ``average_gradients`` then divides by the world size, which gives every rank the
gradient of the one-process computation on the global batch. A loss that is a mean over samples needs
no gathering: the average of the ranks' gradients is the gradient of the global mean. ``SyncBatchNorm``
normalises with the statistics of the global batch in the same way. Without a process group every
helper is the identity, so the one-process path costs nothing.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bench.core.collectives import gather_with_grad, is_distributed, rank, world_size
from bench.core.torch_state import threads_scope
from bench.errors import ConfigError


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient of ``params`` by its mean over the ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def rank_share(order: torch.Tensor, batch_size: int) -> torch.Tensor:
    """This rank's contiguous share of every full global batch of ``order`` (the same order on every rank)."""
    world = world_size()
    steps = len(order) // batch_size
    return order[: steps * batch_size].view(steps, world, batch_size // world)[:, rank()].reshape(-1)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm that, in training mode inside a process group, normalises with the global batch's statistics.

    Each rank's mean, biased variance and count are gathered (differentiably) and combined exactly; the
    running statistics take the unbiased global variance. Unlike torch.nn.SyncBatchNorm it also runs on
    the CPU (gloo). Outside a group, or in eval mode, it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (got {input.dim()})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=xs.dtype, device=x.device)
        local = torch.stack([xs.mean(dims), xs.var(dims, unbiased=False), count])
        means, variances, counts = gather_with_grad(local[None]).unbind(1)  # each (world, C)
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        var = (counts * (variances + (means - mean).pow(2))).sum(0) / n  # pooled variance of the global batch
        y = (xs - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), factor)
        return y.to(x.dtype)


def convert_sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm layer replaced by a SyncBatchNorm that shares its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        return sync.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batch_norm(child))
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int, device_type: str) -> Iterator[None]:
    """Join the group of ``world`` processes on this machine as ``rank`` (CUDA: on GPU ``rank``); leave it on exit."""
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _peer(rank: int, world: int, port: int, device_type: str, threads: int, work: Callable[[], object]) -> None:
    with threads_scope(threads), process_group(rank, world, port, device_type):
        work()


@contextlib.contextmanager
def rank_zero_of(world: int, device_type: str, peer_work: Callable[[], object]) -> Iterator[None]:
    """Run the body as rank 0 of ``world`` processes; ranks 1..world-1 run ``peer_work`` in spawned processes.

    ``peer_work`` must be picklable (e.g. a functools.partial of a module-level function). On CUDA rank r
    uses visible GPU r; on the CPU the ranks split this process's intra-op threads. Peers still running
    when the body raises are terminated.
    """
    if device_type == "cuda" and torch.cuda.device_count() < world:
        raise ConfigError(f"launcher.gpus_per_cell={world} but this worker sees {torch.cuda.device_count()} GPU(s); "
                          "lower gpus_per_cell or give each worker that many GPUs")
    port = free_port()
    threads = torch.get_num_threads()
    share = max(1, threads // world)
    spawn = mp.get_context("spawn")
    peers = [spawn.Process(target=_peer, args=(r, world, port, device_type, share, peer_work)) for r in range(1, world)]
    for p in peers:
        p.start()
    try:
        with threads_scope(share), process_group(0, world, port, device_type):
            yield
    except BaseException:
        for p in peers:
            p.terminate()
        raise
    finally:
        for p in peers:
            p.join()

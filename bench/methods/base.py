"""The contract every method implements.

A method is an ``nn.Module`` that owns the backbone, its heads and any state (EMA targets, queues,
running statistics). Its loss lives beside it as a pure function of tensors. The training engine
calls ``forward(views, step, total_steps)`` for the loss and ``on_step_end`` after each optimizer
step; evaluation only ever uses ``backbone``.

With several processes (bench.train.distributed) every rank runs ``forward`` on its share of the global
batch and the engine averages the gradients: a loss that is a mean over samples needs nothing more; a loss
built from batch statistics (negatives, covariances, codes) gathers the embeddings with ``gather_with_grad``
and computes the one-process loss on them, and state updates (queues, running statistics, EMA targets)
must come out the same on every rank.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from bench.data.views import Views
from bench.models.heads import HeadSpec
from bench.schema import ConfigModel

T = TypeVar("T")


class MethodParams(ConfigModel):
    """Typed hyper-parameters of a method; each subclass holds the paper's defaults."""

    name: str
    projector: HeadSpec = ""


class Method(nn.Module):
    """Parameters with ``requires_grad=False`` (EMA targets) are left out of the optimizer."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    #: default view recipe (see bench.data.views.RECIPES)
    recipe: ClassVar[str] = "simclr"
    #: the engine passes the clean (non-augmented) view when this is set
    needs_clean_view: ClassVar[bool] = False
    #: the paper's optimizer, as OptimizerConfig fields; suites override any of them
    optimizer: ClassVar[dict[str, Any]] = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(self, backbone: nn.Module, params: MethodParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.num_classes = num_classes
        self.image_shape = image_shape

    @abstractmethod
    def forward(self, views: Views, step: int, total_steps: int) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, ...}``; extra entries are logged (detached) as metrics."""

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Per-step hook after the optimizer step (EMA updates, queues). Default: nothing."""

    def prepare(self, split: Any, cache_dir: Path) -> None:
        """Called once before training with the pre-training split (an ImageSet on the training
        device, or a FolderSet) and the directory for per-dataset caches. Default: nothing."""


def fp32_loss(fn: Callable[..., T]) -> Callable[..., T]:
    """Compute a loss in (at least) float32 even inside a bf16 autocast region.

    Logits divided by a small temperature, D x D correlation matrices and log-determinants lose too
    much in bf16; the backbone runs in bf16, the loss in float32.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        def up(x: Any) -> Any:
            return x.float() if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16) else x

        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper

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

Readings: where a method's official code computes its loss (or builds its heads) differently from the paper's
equations, its Params hold the paper's values and list the code's in ``code_reading``; ``reading: code`` selects
them all at once (an option given explicitly still wins), and ``reading_in_effect`` says which reading a
resolved config follows. Published numbers come from the authors' code, so the reading is part of the protocol
record that the paper column compares (bench/report/protocol.py). A method whose ``code_reading`` is empty
reads the same either way.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, TypeVar

import torch
from pydantic import Field, model_validator
from torch import nn

from bench.data.views import Views
from bench.models.heads import HeadSpec
from bench.schema import FROM_YAML, ConfigModel

T = TypeVar("T")


class Reading(StrEnum):
    """Which text a method follows where its paper and its official code differ (see the module docstring)."""

    PAPER = "paper"
    CODE = "code"


#: ``MethodParams.reading_in_effect`` of a config that sets some code-reading options back to the paper's values
MIXED = "mixed"


class MethodParams(ConfigModel):
    """Typed hyper-parameters of a method; each subclass holds the paper's defaults and, in ``code_reading``,
    the values of the official code where it differs from the paper."""

    #: field -> its value in the official code, where that differs from the paper's (the field's default)
    code_reading: ClassVar[dict[str, Any]] = {}

    name: str
    projector: HeadSpec = ""
    reading: Annotated[Reading, FROM_YAML] = Field(Reading.PAPER, description="paper: the paper's equations; code: every "
                                                   "reading of the official code at once (options given explicitly still win)")

    @model_validator(mode="before")
    @classmethod
    def _apply_reading(cls, data: Any) -> Any:
        """Under ``reading: code``, the code's values of the options the config leaves out."""
        if isinstance(data, dict) and data.get("reading") == Reading.CODE:
            return {**cls.code_reading, **data}
        return data

    def reading_in_effect(self) -> str:
        """``paper`` or ``code`` when every code-reading option has that reading's value, else ``mixed``; the
        switch itself when the method has no code reading (both read the same)."""
        if not self.code_reading:
            return self.reading.value
        fields = type(self).model_fields
        if all(getattr(self, key) == value for key, value in self.code_reading.items()):
            return Reading.CODE.value
        if all(getattr(self, key) == fields[key].default for key in self.code_reading):
            return Reading.PAPER.value
        return MIXED


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

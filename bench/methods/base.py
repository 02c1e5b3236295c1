"""The contract every method implements.

A method is an ``nn.Module`` that owns the backbone, its heads and any state (EMA targets, queues,
running statistics). Its loss lives beside it as a pure function of tensors. The training engine
calls ``forward(views, step, total_steps)``, which returns a ``StepOutput`` (the loss, the scalars logged as metrics,
and the tensors its step hook needs), and ``on_step_end(outputs, step, total_steps)`` with that record after each
optimizer step: the targets a method declares in ``ema_pairs`` follow their online modules at its ``momentum``, then
its ``update_state`` updates queues and running statistics from ``outputs.state``. Nothing of a step is kept on the
module between forward and the hook, and neither reads a tensor on the host (the engine does, at its log interval);
evaluation only ever uses ``backbone``. ``param_groups`` decides how the optimizer treats each parameter
(weight decay, lr scale, fixed lr); a method's ``presets`` are named recipes (its paper's ViT setting) that fill
several sections of the run config at once.

With several processes (bench.train.distributed, bench.core.collectives) every rank runs ``forward`` on its share of the global
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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, TypeVar, final

import torch
from pydantic import Field, model_validator
from torch import nn

from bench.data.views import Views
from bench.methods.branches import Branches
from bench.methods.ema import EmaPair, ema_update_
from bench.models.backbones import BackboneConfig
from bench.models.heads import HeadSpec
from bench.models.param_groups import DecayRules, ParamGroup, default_groups
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
    preset: Literal["vit"] | None = Field(
        None, description="a named recipe of the method (vit: its paper's ViT setting of optimizer, schedule, views, "
        "gradient clip and heads; see the method's presets); keys given beside it override the preset's")
    branches: Branches = Field(
        "shared", description="shared: one encoder for both views; separate: a second backbone and head of the same "
        "configuration with their own weights; {first: backbone, second: backbone}: different architectures (the "
        "first is the run's backbone, the evaluated one); VICReg Table 5's SW / DW / DA")

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

    def second_backbone(self, backbone: BackboneConfig) -> BackboneConfig | None:
        """The configuration of the second branch's backbone, or None when the branches share one."""
        if self.branches == "shared":
            return None
        return backbone if self.branches == "separate" else self.branches.second


@dataclass(frozen=True)
class StepOutput:
    """What ``Method.forward`` returns for one step; every tensor stays on the device.

    ``loss`` is minimised; ``logs`` are scalars the engine sums and records as metrics (detached) beside the loss;
    ``state`` holds what ``update_state`` needs after the optimizer step (this step's keys, embeddings, batch means)
    and is never logged.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Parameters with ``requires_grad=False`` (EMA targets) are left out of the optimizer."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    #: default view recipe (see bench.data.views.RECIPES)
    recipe: ClassVar[str] = "simclr"
    #: the method works on a ViT's patches (MAE): other backbones are refused when the config is resolved
    needs_vit: ClassVar[bool] = False
    #: the engine passes the clean (non-augmented) view when this is set
    needs_clean_view: ClassVar[bool] = False
    #: the paper's optimizer, as OptimizerConfig fields; suites override any of them
    optimizer: ClassVar[dict[str, Any]] = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
    #: the paper's schedule, as ScheduleConfig fields (default: the ScheduleConfig defaults)
    schedule: ClassVar[dict[str, Any]] = {}
    #: named recipes: preset -> the run-config sections it sets (method, backbone, optimizer, schedule, augment, train)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: why both views must go through one encoder; empty for the methods whose branches may differ
    shared_weights_reason: ClassVar[str] = (
        "VICReg (Analysis 'Weight sharing', Table 5): only SimCLR, Barlow Twins and VICReg handle branches with "
        "separate weights or architectures")
    #: what else than the learning rate can make this method's loss non-finite, and its fix (added to DivergedError)
    divergence_hint: ClassVar[str] = ""
    #: a reference row that learns nothing (bench/methods/baselines.py): trained for 0 epochs, listed apart
    baseline: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "on_step_end" in vars(cls):  # the EMA of the declared pairs would be skipped
            raise TypeError(f"{cls.__name__} overrides Method.on_step_end; override ema_pairs, momentum or update_state")
        if cls.ema_pairs is not Method.ema_pairs and cls.momentum is Method.momentum:
            raise TypeError(f"{cls.__name__} declares ema_pairs but no momentum schedule; define momentum(step, total_steps)")

    def __init__(self, backbone: nn.Module, params: MethodParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.num_classes = num_classes
        self.image_shape = image_shape

    @abstractmethod
    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """The step's loss, its logged scalars and the state ``update_state`` needs (see ``StepOutput``)."""

    def ema_pairs(self) -> list[EmaPair]:
        """The (online, target) modules whose target follows the online one by EMA after each step. Default: none."""
        return []

    def momentum(self, step: int, total_steps: int) -> float:
        """The EMA decay of the ``ema_pairs`` targets at ``step``. A method that declares pairs defines it (checked
        when its class is defined); without pairs nothing reads it, and 1.0 is a target that does not move."""
        return 1.0

    @final
    @torch.no_grad()
    def on_step_end(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        """After the optimizer step: target <- m target + (1 - m) online for every declared pair, m =
        ``momentum(step, total_steps)``; then ``update_state(outputs, ...)``. Methods override the parts, not this."""
        pairs = self.ema_pairs()
        if pairs:
            m = self.momentum(step, total_steps)
            for pair in pairs:
                ema_update_(pair.target, pair.online, m)
        self.update_state(outputs, step, total_steps)

    def update_state(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        """Per-step updates from ``outputs.state`` after the EMA (queues, running statistics); runs without
        gradients. Default: nothing."""

    def param_groups(self, rules: DecayRules) -> list[ParamGroup]:
        """The optimizer's parameter groups (``rules`` is the run's OptimizerConfig); default: weight decay off
        biases, norms (``exclude_bias_bn``) and a ViT's tokens (``exclude_tokens``). Frozen parameters are left out."""
        return default_groups(self, rules)

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

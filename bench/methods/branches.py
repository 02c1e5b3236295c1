"""Branches that differ (VICReg Table 5): the second view through its own backbone and head.

``shared`` (SW) sends both views through the method's backbone and head; ``separate`` (DW) builds a second
backbone of the same configuration with its own initial weights and a second head; ``{first, second}`` (DA) builds
the second branch from another backbone configuration (e.g. ResNet-50 with ViT-S; ``first`` may be left out: it is
the run's backbone). Both heads end at the same
width, so the loss compares the two embeddings as before; the first branch is the one evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import field_validator
from torch import nn

from bench.models.backbones import BackboneConfig
from bench.schema import ConfigModel


class BranchBackbones(ConfigModel):
    """Two backbone configurations: the first is the run's backbone (evaluated; null: the run's ``backbone``), the
    second the other view's."""

    first: BackboneConfig | None = None
    second: BackboneConfig

    @field_validator("first", "second", mode="before")
    @classmethod
    def _bare_name(cls, v: object) -> object:
        return {"name": v} if isinstance(v, str) else v


Branches = Literal["shared", "separate"] | BranchBackbones


def second_branch(backbone_b: nn.Module | None, head: Callable[[int], nn.Module]) -> nn.Sequential | None:
    """The second view's encoder (backbone then its own head built by ``head(out_dim)``), or None when shared."""
    return None if backbone_b is None else nn.Sequential(backbone_b, head(backbone_b.out_dim))


#: why the methods with a momentum (EMA) target need shared weights
MOMENTUM_TARGET = ("its target is a moving average of the online encoder, so both branches need the same architecture "
                   "and weights (VICReg, Analysis 'Weight sharing')")
#: why the stop-gradient methods need shared weights
STOP_GRADIENT = ("its target branch sits behind a stop-gradient: with weights of its own it would never be trained "
                 "(VICReg, Analysis 'Weight sharing')")

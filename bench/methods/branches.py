"""Branches that differ (VICReg Table 5): the second view through its own backbone and head.

``shared`` (SW) sends both views through the method's backbone and head; ``separate`` (DW) builds a second
backbone of the same configuration with its own initial weights and a second head; ``{first, second}`` (DA) builds
the second branch from another backbone configuration (e.g. ResNet-50 with ViT-S). Both heads end at the same
width, so the loss compares the two embeddings as before; the first branch is the one evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from bench.models.backbones import BackboneConfig


class BranchBackbones(BaseModel):
    """Two backbone configurations: the first is the run's backbone (evaluated), the second the other view's."""

    model_config = ConfigDict(extra="forbid")

    first: BackboneConfig
    second: BackboneConfig


Branches = Literal["shared", "separate"] | BranchBackbones


def second_branch(backbone_b: nn.Module | None, head: Callable[[int], nn.Module]) -> nn.Sequential | None:
    """The second view's encoder (backbone then its own head built by ``head(out_dim)``), or None when shared."""
    return None if backbone_b is None else nn.Sequential(backbone_b, head(backbone_b.out_dim))

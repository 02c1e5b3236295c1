"""Barlow Twins: Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021.

Two views go through a shared backbone and a wide projector. Each embedding dimension is
standardised over the batch and the D x D cross-correlation matrix C of the two views is computed;
the loss pulls its diagonal to 1 (invariance to the augmentations) and, weighted by lambda, its
off-diagonal entries to 0 (redundancy reduction between dimensions). No negatives, predictor or
stop-gradient. Standardising with the biased (1/N) std makes C equal the paper's Eq. 2 exactly.

Code reading (``reading: code``, facebookresearch/barlowtwins ``main.py``):
- lambda of Eq. 1: the paper's 5e-3; the official code's default 0.0051: ``lambd=0.0051``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods import register_method
from bench.methods.base import Method, MethodParams, fp32_loss
from bench.models.heads import HeadSpec, mlp
from bench.train.distributed import gather_with_grad


class BarlowTwinsParams(MethodParams):
    name: Literal["barlow_twins"] = "barlow_twins"
    projector: HeadSpec = Field("8192-8192-8192", description="projector widths (hidden BN, plain output)")
    lambd: float = Field(0.005, ge=0, description="weight lambda of the off-diagonal (redundancy reduction) term")

    code_reading: ClassVar[dict[str, Any]] = {"lambd": 0.0051}


@fp32_loss
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return L_BT and its two unweighted terms ``on_diag`` and ``off_diag``."""
    n = z1.shape[0]
    z1n = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)  # mean-centred, unit std over the batch
    z2n = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    c = z1n.T @ z2n / n  # Eq. 2: C_ij = sum_b z1_bi z2_bj / (|z1_:i| |z2_:j|)
    diagonal = torch.diagonal(c)
    on_diag = (1 - diagonal).pow(2).sum()  # Eq. 1, invariance term: sum_i (1 - C_ii)^2
    off_diag = c.pow(2).sum() - diagonal.pow(2).sum()  # Eq. 1, redundancy term: sum_{i != j} C_ij^2
    loss = on_diag + lambd * off_diag  # Eq. 1
    return loss, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()}


@register_method
class BarlowTwins(Method):
    name: ClassVar[str] = "barlow_twins"
    Params: ClassVar[type[MethodParams]] = BarlowTwinsParams
    recipe: ClassVar[str] = "byol"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1.5e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }

    def __init__(
        self, backbone: nn.Module, params: BarlowTwinsParams, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector)

    def forward(self, views: Views, step: int, total_steps: int) -> dict[str, torch.Tensor]:
        """Barlow Twins loss of the two crops; also logs its two unweighted terms."""
        z1, z2 = (gather_with_grad(self.projector(self.backbone(x))) for x in views.crops[:2])  # C over the global batch
        loss, terms = barlow_twins_loss(z1, z2, self.params.lambd)
        return {"loss": loss, **terms}

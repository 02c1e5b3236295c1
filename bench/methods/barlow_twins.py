"""Barlow Twins: Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021.

Two views go through a shared backbone and a wide projector. Each embedding dimension is
standardised over the batch and the D x D cross-correlation matrix C of the two views is computed;
the loss pulls its diagonal to 1 (invariance to the augmentations) and, weighted by lambda, its
off-diagonal entries to 0 (redundancy reduction between dimensions). No negatives, predictor or
stop-gradient. Standardising with the biased (1/N) std makes C equal the paper's Eq. 2 exactly.

Code reading (``reading: code``, facebookresearch/barlowtwins ``main.py``):
- lambda of Eq. 1: the paper's 5e-3; the official code's default 0.0051: ``lambd=0.0051``.

Ambiguities resolved:
- biases and BN parameters: the run's lr; the paper trains them at 0.0048 against 0.2 for the weights (Sec. 4):
  ``bias_lr=0.024``.

ViT (``method.preset=vit``): VICReg's Table 5 trains Barlow Twins with a ViT-S branch in its 100-epoch setting;
nothing ViT-specific is stated, so the preset is the paper's own optimizer (LARS, lr 0.2 and 0.0048 for biases
and norms at batch 256 x, weight decay 1.5e-6, 10 warm-up epochs) and BYOL's views on a ViT backbone.

Branches (``method.branches``): the second view through its own backbone and projector (VICReg Table 5 DW, DA).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.branches import second_branch
from bench.models.heads import HeadSpec, mlp
from bench.models.param_groups import DecayRules, ParamGroup, no_decay_names, split_groups
from bench.core.collectives import gather_with_grad


class BarlowTwinsParams(MethodParams):
    name: Literal["barlow_twins"] = "barlow_twins"
    projector: HeadSpec = Field("8192-8192-8192", description="projector widths (hidden BN, plain output)")
    lambd: float = Field(0.005, ge=0, description="weight lambda of the off-diagonal (redundancy reduction) term")
    bias_lr: float | None = Field(None, gt=0, description="lr of biases and BN parameters as a fraction of the weights' "
                                  "(the paper: 0.0048 / 0.2 = 0.024); null: the same lr")

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
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"bias_lr": 0.024},
        "backbone": {},
        "optimizer": {"name": "lars", "lr": 0.2, "lr_scaling": "linear", "weight_decay": 1.5e-6, "momentum": 0.9,
                      "exclude_bias_bn": True},
        "schedule": {"warmup_epochs": 10},
        "augment": "byol",
    }}
    shared_weights_reason: ClassVar[str] = ""

    def __init__(
        self, backbone: nn.Module, params: BarlowTwinsParams, *, num_classes: int, image_shape: tuple[int, int, int],
        backbone_b: nn.Module | None = None,
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector)
        self.branch_b = second_branch(backbone_b, lambda dim: mlp(dim, params.projector))

    def param_groups(self, rules: DecayRules) -> list[ParamGroup]:
        """With ``bias_lr``: biases and BN parameters (ndim <= 1) at that fraction of the lr (Sec. 4)."""
        if self.params.bias_lr is None:
            return super().param_groups(rules)
        bias_lr = self.params.bias_lr
        return split_groups(self.named_parameters(), rules, no_decay_names(self), lr_scale=lambda _, p: bias_lr if p.ndim <= 1 else 1.0)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Barlow Twins loss of the two crops; also logs its two unweighted terms."""
        first = self.projector(self.backbone(views.crops[0]))
        x2 = views.crops[1]
        second = self.projector(self.backbone(x2)) if self.branch_b is None else self.branch_b(x2)
        z1, z2 = gather_with_grad(first), gather_with_grad(second)  # C over the global batch
        loss, terms = barlow_twins_loss(z1, z2, self.params.lambd)
        return StepOutput(loss, logs=terms)

"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020.

An online network (backbone, projector, predictor) predicts the projection that a target network
(backbone and projector, no predictor) gives for the other view of the same image. The loss is the
squared distance of the L2-normalised vectors, 2 - 2 cos, summed over both view orderings; the
target gets no gradient and follows the online weights as an exponential moving average whose decay
rises from tau_base to 1 on a cosine schedule over the training steps. No negatives are used.
The target's batch-norm running statistics are copied from the online network at each update.

Ambiguities resolved:
- tau_base: 0.996, the paper's ImageNet value (batch 4096); CIFAR reimplementations such as
  solo-learn use 0.99: ``tau_base=0.99``.

ViT (``method.preset=vit``): MoCo v3's benchmark of BYOL on ViT (Chen, Xie & He 2021, Sec. 6.1, App. A): AdamW,
lr 1e-4 x batch / 256 and weight decay 0.03 (the Fig. 6 caption's ViT-B values; no other is published), 40
warm-up epochs, BN in the hidden layers of the heads only, two crops, random (frozen) patch projection and sin-cos
position embedding. tau_base stays 0.996 (not stated for ViT).

Branches: BYOL fails with separate weights or architectures (VICReg Table 5): ``method.branches`` must be shared.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.branches import MOMENTUM_TARGET
from bench.methods.ema import EmaPair, cosine_momentum, frozen_copy
from bench.models.heads import HeadSpec, mlp, out_dim


class BYOLParams(MethodParams):
    name: Literal["byol"] = "byol"
    projector: HeadSpec = Field("4096-256", description="projector g widths (hidden BN, plain output)")
    predictor: HeadSpec = Field("4096-256", description="predictor q widths; must end at the projector width")
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA decay at step 0, raised to 1 by a cosine schedule")


@fp32_loss
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); ``z`` is the (fixed) target."""
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()  # Eq. 2


class BYOL(Method):
    name: ClassVar[str] = "byol"
    Params: ClassVar[type[MethodParams]] = BYOLParams
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
        "method": {"projector": "4096-256", "predictor": "4096-256"},
        "backbone": {"pos_embed": "sincos", "freeze_patch_embed": True, "weight_init": "moco"},
        "optimizer": {"name": "adamw", "lr": 1e-4, "lr_scaling": "linear", "weight_decay": 0.03, "exclude_bias_bn": False,
                      "exclude_tokens": False},
        "schedule": {"warmup_epochs": 40},
        "augment": "byol",
    }}
    shared_weights_reason: ClassVar[str] = "VICReg Table 5 marks BYOL as failing with separate weights or architectures; " + MOMENTUM_TARGET

    def __init__(self, backbone: nn.Module, params: BYOLParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        projection_dim = out_dim(backbone.out_dim, params.projector)
        if out_dim(projection_dim, params.predictor) != projection_dim:
            raise ConfigError(
                f"byol: method.predictor '{params.predictor}' must end at the projector width {projection_dim} "
                f"(method.projector '{params.projector}'); e.g. predictor '4096-{projection_dim}'"
            )
        self.projector = mlp(backbone.out_dim, params.projector)
        self.predictor = mlp(projection_dim, params.predictor)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Symmetrised BYOL loss L + L~ of the two crops; also logs the current EMA decay."""
        p1, p2 = (self.predictor(self.projector(self.backbone(x))) for x in views.crops[:2])
        with torch.no_grad():  # stop-gradient: the target is not trained by the loss
            t1, t2 = (self.target_projector(self.target_backbone(x)) for x in views.crops[:2])
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)  # Sec. 3.1: L^BYOL = L_{theta,xi} + L~_{theta,xi}
        tau = torch.tensor(self.momentum(step, total_steps), device=loss.device)
        return StepOutput(loss, logs={"tau": tau})

    def ema_pairs(self) -> list[EmaPair]:
        """Eq. 1, xi <- tau xi + (1 - tau) theta, for the target backbone and projector."""
        return [EmaPair(self.backbone, self.target_backbone), EmaPair(self.projector, self.target_projector)]

    def momentum(self, step: int, total_steps: int) -> float:
        """tau, from ``tau_base`` to 1 on BYOL's cosine schedule."""
        return cosine_momentum(self.params.tau_base, step, total_steps)

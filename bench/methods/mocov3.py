"""MoCo v3: Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021. The sources are the paper (Algorithm 1, Sec. 4) and the official code, facebookresearch/moco-v3
(moco/builder.py, main_moco.py).

MoCo without a queue: the query encoder (backbone, projector, predictor) and a momentum key encoder
(backbone and projector, no predictor) embed both crops; each query is contrasted with the keys of
the same batch, its own crop's partner on the diagonal, by a cross-entropy over L2-normalised dot
products at temperature tau scaled by 2 tau, summed over both crop orders. The key encoder gets no
gradient and follows the query encoder by an EMA whose decay rises from m to 1 on a cosine schedule.

Code reading (``reading: code``, facebookresearch/moco-v3 ``moco/builder.py``):
- predictor output: the paper (Sec. 4) puts BN on every layer of both MLPs, the predictor's output too;
  the official code ends the predictor with a plain Linear: ``predictor_last_bn=false``.

Ambiguities resolved:
- projector: 3 layers 4096-4096-256 as in the paper, BN on every layer, the last without affine; the
  official code's ResNet model uses 2 layers: ``projector="4096-256"`` (its ViT model keeps 3, so the
  switch leaves the depth to the suite).
- temperature: 1.0, the official ResNet-50 default; its ViT recipe uses 0.2: ``temperature=0.2``.

ViT (``method.preset=vit``): the official ViT recipe (CONFIG.md, main_moco.py): AdamW, lr 1.5e-4 x batch / 256,
weight decay 0.1 on every parameter (biases, norms and the class token too), 40 warm-up epochs then cosine,
temperature 0.2, momentum 0.99 -> 1, a predictor whose output is batch-normalised (the ViT builder's last BN),
BYOL's views with crops of scale (0.08, 1), and the ViT with a frozen random patch projection, a fixed 2-D sin-cos
position embedding and MoCo v3's init. MoCo v3's ViT-S has 12 heads (DeiT's has 6): ``backbone.num_heads=12``.
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
from bench.core.collectives import gather_with_grad


class MoCoV3Params(MethodParams):
    name: Literal["mocov3"] = "mocov3"
    projector: HeadSpec = Field("4096-4096-256", description="projector widths (BN on every layer, the last without affine)")
    predictor: HeadSpec = Field("4096-256", description="predictor widths (hidden BN); must end at the projector width")
    predictor_last_bn: bool = Field(True, description="BN on the predictor output (paper; false: the code's plain Linear)")
    temperature: float = Field(1.0, gt=0, description="tau of the contrastive loss (official ResNet-50 value)")
    momentum: float = Field(0.99, ge=0, le=1, description="m at step 0 (ResNet), raised to 1 by a cosine schedule")

    code_reading: ClassVar[dict[str, Any]] = {"predictor_last_bn": False}


def _contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)  # keys come from the momentum encoder: no gradient
    logits = q @ k.T / temperature  # Alg. 1: logits = mm(q, k.t()) / tau, an N x N matrix of pairs
    labels = torch.arange(len(q), device=q.device)  # Alg. 1: the positives are on the diagonal
    return F.cross_entropy(logits, labels) * 2 * temperature  # Alg. 1: CrossEntropyLoss(logits, labels) * 2 tau


@fp32_loss
def mocov3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetrised in-batch contrastive loss; ``qi`` / ``ki`` are the query / key of crop i."""
    return _contrastive(q1, k2, temperature) + _contrastive(q2, k1, temperature)  # Alg. 1: ctr(q1,k2) + ctr(q2,k1)


class MoCoV3(Method):
    name: ClassVar[str] = "mocov3"
    Params: ClassVar[type[MethodParams]] = MoCoV3Params
    recipe: ClassVar[str] = "byol"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1.5e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"temperature": 0.2, "momentum": 0.99, "predictor_last_bn": True},
        "backbone": {"pos_embed": "sincos", "freeze_patch_embed": True, "weight_init": "moco"},
        "optimizer": {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1, "exclude_bias_bn": False,
                      "exclude_tokens": False},
        "schedule": {"warmup_epochs": 40},
        "augment": "byol",
    }}
    shared_weights_reason: ClassVar[str] = MOMENTUM_TARGET

    def __init__(
        self, backbone: nn.Module, params: MoCoV3Params, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        projection_dim = out_dim(backbone.out_dim, params.projector)
        if out_dim(projection_dim, params.predictor) != projection_dim:
            raise ConfigError(
                f"mocov3: method.predictor '{params.predictor}' must end at the projector width {projection_dim} "
                f"(method.projector '{params.projector}'); e.g. predictor '4096-{projection_dim}'"
            )
        self.projector = mlp(backbone.out_dim, params.projector, last_bn=True, last_bn_affine=False)
        self.predictor = mlp(projection_dim, params.predictor, last_bn=params.predictor_last_bn)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Symmetrised contrastive loss of the two crops; also logs the current momentum."""
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in views.crops[:2])
        with torch.no_grad():  # the key encoder is not trained by the loss
            k1, k2 = (self.key_projector(self.key_backbone(x)) for x in views.crops[:2])
        q1, q2, k1, k2 = (gather_with_grad(t) for t in (q1, q2, k1, k2))  # keys of the global batch
        loss = mocov3_loss(q1, q2, k1, k2, self.params.temperature)
        m = torch.tensor(self.momentum(step, total_steps), device=loss.device)
        return StepOutput(loss, logs={"momentum": m})

    def ema_pairs(self) -> list[EmaPair]:
        """theta_k <- m theta_k + (1 - m) theta_q for the key backbone and projector."""
        return [EmaPair(self.backbone, self.key_backbone), EmaPair(self.projector, self.key_projector)]

    def momentum(self, step: int, total_steps: int) -> float:
        """m, from ``params.momentum`` to 1 on a cosine schedule."""
        return cosine_momentum(self.params.momentum, step, total_steps)

"""SimCLR: Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020.

Two augmented views of each of N images pass through the backbone and a projection MLP g; the
NT-Xent loss treats the other view of the same image as the positive and the remaining 2N - 2 views
of the batch as negatives, comparing cosine similarities at a temperature. The backbone output h
(before g) is the representation. Both views go through the network as one batch of 2N, so batch
norm sees all 2N samples (the paper's global BN).

Code reading (``reading: code``, google-research/simclr ``model_util.py``):
- projector output layer: plain Linear as in the paper's g(h) = W2 relu(W1 h) (Sec. 2.1; BN on the hidden
  layer); the official code also batch-normalises the output: ``projector_last_bn=True``.

Ambiguities resolved:
- temperature: 0.1, the paper's ImageNet default; its CIFAR-10 experiments use 0.5: ``temperature=0.5``.

ViT (``method.preset=vit``): MoCo v3's benchmark of SimCLR on ViT (Chen, Xie & He 2021, Sec. 6.1, Table 4): AdamW,
40 warm-up epochs, two crops with MoCo v3's (BYOL's) augmentation, random (frozen) patch projection, sin-cos
position embedding, a 3-layer 4096-4096-256 projector with BN on every layer (Sec. 5). lr 2e-4 x batch / 256 and
weight decay 0.1 on every parameter are the Fig. 6 caption's ViT-B values (the paper swept them per framework but
publishes no other); temperature 0.1 as in the FAIR XLA reproduction (ronghanghu/moco_v3_tpu, MoCo's own is 0.2).

Branches (``method.branches``): the second view can go through its own backbone and projector (VICReg Table 5's
DW and DA cells); the two views are then normalised separately by each branch's BN.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.branches import second_branch
from bench.models.heads import HeadSpec, mlp
from bench.core.collectives import gather_with_grad


class SimCLRParams(MethodParams):
    name: Literal["simclr"] = "simclr"
    projector: HeadSpec = Field("2048-128", description="projection MLP g widths (hidden BN, plain output)")
    projector_last_bn: bool = Field(False, description="BN on the projector output (official code variant)")
    temperature: float = Field(0.1, gt=0, description="NT-Xent temperature tau (paper, ImageNet)")

    code_reading: ClassVar[dict[str, Any]] = {"projector_last_bn": True}


@fp32_loss
def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N views; row i of ``z1`` and row i of ``z2`` are the positive pair."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature  # sim(z_i, z_k) / tau, cosine similarity
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # Eq. 1: the denominator skips k = i
    positives = torch.arange(2 * n, device=z.device).roll(n)  # view i pairs with view i + N (mod 2N)
    return F.cross_entropy(logits, positives)  # Eq. 1 for l(i, j), averaged over all 2N anchors


class SimCLR(Method):
    name: ClassVar[str] = "simclr"
    Params: ClassVar[type[MethodParams]] = SimCLRParams
    recipe: ClassVar[str] = "simclr"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"projector": "4096-4096-256", "projector_last_bn": True, "temperature": 0.1},
        "backbone": {"pos_embed": "sincos", "freeze_patch_embed": True, "weight_init": "moco"},
        "optimizer": {"name": "adamw", "lr": 2e-4, "lr_scaling": "linear", "weight_decay": 0.1, "exclude_bias_bn": False,
                      "exclude_tokens": False},
        "schedule": {"warmup_epochs": 40},
        "augment": "byol",
    }}
    shared_weights_reason: ClassVar[str] = ""

    def __init__(
        self, backbone: nn.Module, params: SimCLRParams, *, num_classes: int, image_shape: tuple[int, int, int],
        backbone_b: nn.Module | None = None,
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector, last_bn=params.projector_last_bn)
        self.branch_b = second_branch(backbone_b, lambda dim: mlp(dim, params.projector, last_bn=params.projector_last_bn))

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """NT-Xent loss of the two crops; also logs the mean cosine similarity of positive pairs."""
        if self.branch_b is None:
            z1, z2 = self.projector(self.backbone(torch.cat(views.crops[:2]))).chunk(2)
        else:
            z1, z2 = self.projector(self.backbone(views.crops[0])), self.branch_b(views.crops[1])
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # negatives from the global batch
        loss = simclr_loss(z1, z2, self.params.temperature)
        positive_cos = F.cosine_similarity(z1.detach(), z2.detach(), dim=1).mean()
        return StepOutput(loss, logs={"positive_cos": positive_cos})

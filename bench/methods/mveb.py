"""MVEB: Wen, Wang, Liu & Xu, "MVEB: Self-Supervised Learning with Multi-View Entropy Bottleneck",
IEEE TPAMI 46(9), 2024.

A multi-view information bottleneck reduced to two terms on L2-normalised embeddings: the agreement
-E[z2^T z1] between the online embedding of one view and the target embedding of the other, and
the differential entropy H(z) of the online embeddings, maximised with weight beta (Eq. 11). The
entropy is never evaluated: its gradient is the Stein score estimate S(z) ~ grad_z log q(z) of the
batch under a von Mises-Fisher kernel (Eq. 17-18, Appendix A), pushed back through the embeddings by
the surrogate H_surr = -mean_i <S_i, z_i> with S detached. Its value is not an entropy, so the
alignment and the Wang-Isola uniformity are logged instead. No predictor; the target is an EMA copy
of the backbone and projector.

Ambiguities resolved:
- agreement: the positive-pair (diagonal) cosine of Eq. 10-11 and the official code, with the loss
  -align - beta H; Algorithm 1's all-pairs mean and its sign are typos (no option).
- target branch: the momentum encoder of the main runs, tau from 0.996 to 1 on a cosine schedule;
  the weight-sharing net of the Sec. 7.1 ablation (both sides with gradient): ``target="shared"``.
- entropy of view 2 under a momentum target: applied to the online embedding of view 2, every crop
  (local ones included) with its own batch as the sample set, averaged over crops, as in the code.
- bandwidth Delta: the official rule, the (M^2 // 2)-th largest of the M x M cosine distances
  1 - z_i^T z_j with the zero diagonal included (the upper middle value for an even count, not the
  lower median; ``docs/mveb.md`` §3), clamped below: ``min_bandwidth``.
- Stein ridge: 0.01, from the official code only: ``eta``.
- learning rate: the paper's 0.4 x batch / 256; the official config uses 0.3: ``optimizer.lr=0.3``.
- LARS: biases and norm parameters are left out of both the adaptation and the weight decay (code);
  the paper names only the adaptation (no option).
- EMA timing: after each optimizer step; the code updates at the start of the next forward, which
  shifts the tau schedule by one step.
- multi-crop (more than two crops): the global crops pair crosswise with the other's target, each
  local crop with the unnormalised mean of the two global targets; alignment averaged over crops.
- several processes: the embeddings are gathered, so the Stein score's sample set is the global batch.

Code reading: none (``reading: code`` changes nothing). The loss follows the official code where the paper is
silent or wrong (Algorithm 1's typos, the bandwidth's zero diagonal, the ridge eta) in both readings; the code's
other differences are optimizer settings (lr 0.3, LARS exclusions), set in a suite.

ViT (``method.preset=vit``): Table 7 "follows the experiment setting on ImageNet in MoCo v3" and gives no ViT
hyper-parameters (nor does the official code, ResNets only); the preset reads that as MoCo v3's ViT recipe: AdamW,
lr 1.5e-4 x batch / 256, weight decay 0.1 on every parameter, 40 warm-up epochs, two crops of BYOL's views, random
(frozen) patch projection and sin-cos position embedding, with MVEB's own 2048-2048-2048 projector, beta 0.01 and
its momentum target (tau 0.996 -> 1). MoCo v3's ViT-S has 12 heads: ``backbone.num_heads=12``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.eval.diagnostics import uniformity_tensor
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.branches import MOMENTUM_TARGET
from bench.methods.ema import EmaPair, cosine_momentum, frozen_copy
from bench.models.heads import HeadSpec, mlp
from bench.core.collectives import gather_with_grad


class MVEBParams(MethodParams):
    name: Literal["mveb"] = "mveb"
    projector: HeadSpec = Field("2048-2048-2048", description="projector widths (hidden BN + ReLU, last Linear with bias)")
    beta: float = Field(0.01, ge=0, description="beta, weight of the entropy term (Eq. 11)")
    target: Literal["momentum", "shared"] = Field(
        "momentum", description="target branch: EMA copy (no gradient) or the online network itself (with gradient)"
    )
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA decay at step 0, raised to 1 by a cosine schedule")
    eta: float = Field(0.01, gt=0, description="ridge added to the kernel matrix in the Stein estimator")
    min_bandwidth: float = Field(0.1, gt=0, description="lower clamp of the vMF kernel bandwidth Delta")


def vmf_bandwidth(cos: torch.Tensor, min_bandwidth: float) -> torch.Tensor:
    """Delta from the M x M cosine matrix: the (M^2 // 2)-th largest of 1 - cos, at least ``min_bandwidth``."""
    distances = (1 - cos).flatten()  # cosine distances, the zero diagonal included
    return torch.topk(distances, k=distances.numel() // 2).values[-1].clamp(min=min_bandwidth)  # median heuristic


@fp32_loss
@torch.no_grad()
def vmf_stein_score(z: torch.Tensor, eta: float, min_bandwidth: float) -> torch.Tensor:
    """Stein estimate of grad_z log q(z_i) for the rows of ``z`` (M, d), unit-norm; no gradient."""
    cos = z @ z.T
    delta = vmf_bandwidth(cos, min_bandwidth)
    kernel = torch.exp(cos / delta)  # Eq. 18: k(z, z') = exp(z^T z' / Delta)
    grad_kernel = kernel.sum(dim=1, keepdim=True) * z / delta  # sum_m dk(z_i, z_m)/dz_m = sum_m K_im z_i / Delta
    ridge = eta * torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    return -torch.linalg.solve(kernel + ridge, grad_kernel)  # Eq. 26: G = -(K + eta I)^-1 grad K


@fp32_loss
def entropy_surrogate(z: torch.Tensor, eta: float, min_bandwidth: float) -> torch.Tensor:
    """H_surr = -mean_i <S_i, z_i>, S the detached Stein score: its gradient is the estimate of grad H(z)."""
    score = vmf_stein_score(z.detach(), eta, min_bandwidth)
    return -(score * z).sum(dim=-1).mean()  # Eq. 17: grad H = -E[grad_z log q(z) . grad f(v)]


@fp32_loss
def mveb_loss(
    online: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, beta: float, eta: float, min_bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the MVEB loss and the (detached) alignment.

    ``online``: (V, B, D) normalised online embeddings, the two global crops first; ``t1``, ``t2``:
    (B, D) normalised target embeddings of the global crops.
    """
    views = online.shape[0]
    align = (online[0] * t2).sum(-1).mean() + (online[1] * t1).sum(-1).mean()  # Eq. 11: E[z2^T z1], both orders
    local_target = (t1 + t2) / 2  # Sec. 6.1: a local crop's positive is the mean of the two global targets
    align = align + (online[2:] * local_target).sum(-1).mean(-1).sum()
    entropy = sum(entropy_surrogate(z, eta, min_bandwidth) for z in online)  # Eq. 11: (H(z1) + H(z2)) / 2
    loss = -align / views - beta * entropy / views  # Eq. 11: -E[z2^T z1] - beta/2 (H(z1) + H(z2))
    return loss, (align / views).detach()


class MVEB(Method):
    name: ClassVar[str] = "mveb"
    Params: ClassVar[type[MethodParams]] = MVEBParams
    recipe: ClassVar[str] = "byol"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.4,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"beta": 0.01, "projector": "2048-2048-2048"},
        "backbone": {"pos_embed": "sincos", "freeze_patch_embed": True, "weight_init": "moco"},
        "optimizer": {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1, "exclude_bias_bn": False,
                      "exclude_tokens": False},
        "schedule": {"warmup_epochs": 40},
        "augment": "byol",
    }}
    shared_weights_reason: ClassVar[str] = "its target is the online encoder itself or " + MOMENTUM_TARGET.removeprefix("its target is ")

    def __init__(self, backbone: nn.Module, params: MVEBParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector)
        if params.target == "momentum":
            self.target_backbone = frozen_copy(backbone)
            self.target_projector = frozen_copy(self.projector)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """MVEB loss of all crops; logs the alignment, the uniformity of crop 1 and (momentum) the EMA decay."""
        online = torch.stack([F.normalize(self.projector(self.backbone(x)), dim=1) for x in views.crops])
        metrics: dict[str, torch.Tensor] = {}
        if self.params.target == "momentum":
            with torch.no_grad():  # the EMA target is not trained by the loss
                t1, t2 = (F.normalize(self.target_projector(self.target_backbone(x)), dim=1) for x in views.crops[:2])
            metrics["tau"] = torch.tensor(self.momentum(step, total_steps), device=online.device)
        else:
            t1, t2 = online[0], online[1]
        p = self.params
        online, t1, t2 = gather_with_grad(online, dim=1), gather_with_grad(t1), gather_with_grad(t2)  # the global batch
        loss, align = mveb_loss(online, t1, t2, p.beta, p.eta, p.min_bandwidth)
        metrics["uniformity"] = uniformity_tensor(online[0].detach())  # stays on the device (no host sync)
        return StepOutput(loss, logs={"align": align, **metrics})

    def ema_pairs(self) -> list[EmaPair]:
        """xi <- tau xi + (1 - tau) theta for the momentum target; none for a shared target."""
        if self.params.target != "momentum":
            return []
        return [EmaPair(self.backbone, self.target_backbone), EmaPair(self.projector, self.target_projector)]

    def momentum(self, step: int, total_steps: int) -> float:
        """tau, from ``tau_base`` to 1 on BYOL's cosine schedule."""
        return cosine_momentum(self.params.tau_base, step, total_steps)

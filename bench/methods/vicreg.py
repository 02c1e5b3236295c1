"""VICReg: Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (arXiv 2021).

Two views go through a shared backbone and a wide expander. Three terms shape the embeddings:
invariance (mean squared distance between the two views' embeddings), variance (a hinge keeping the
std of every dimension above gamma, computed on each branch) and covariance (the squared off-diagonal
covariances of each branch, decorrelating the dimensions). No negatives, predictor or
stop-gradient are needed, and the two branches need not share weights.

Ambiguities resolved:
- invariance scale: the element-wise mean squared error of the official code, on which the
  coefficients 25/25/1 were tuned; the paper's Eq. 5 sums over the D dimensions: ``sim_coeff=25 * D``.
  Both readings keep the mean: the paper's lambda = 25 was set on it.

Code reading (``reading: code``, facebookresearch/vicreg ``main_vicreg.py``):
- variance over two branches: the paper's Eq. 6 adds the hinges, mu [v(Z) + v(Z')];
  the code averages them, mu [v(Z) + v(Z')] / 2: ``variance_branches=mean``.

ViT (``method.preset=vit``): the paper trains a ViT-S only as a branch in Table 5, with its 100-epoch ResNet-50
setting (App. C.4: LARS, base lr 0.3 x batch / 256, weight decay 1e-6, 10 warm-up epochs, biases and norms
excluded) and its symmetric augmentations (App. C.1); the preset applies that setting to a ViT backbone. The
ViT's patch size, heads and position embedding are not stated (the preset keeps timm's DeiT-style defaults).

Branches (``method.branches``): separate weights (DW) or another architecture (DA) for the second view, each with
its own expander (Table 5); v and c are computed per branch, so the loss is unchanged.
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


class VICRegParams(MethodParams):
    name: Literal["vicreg"] = "vicreg"
    projector: HeadSpec = Field("8192-8192-8192", description="expander widths (hidden BN, plain output)")
    sim_coeff: float = Field(25.0, ge=0, description="lambda, weight of the invariance term")
    std_coeff: float = Field(25.0, ge=0, description="mu, weight of the variance term")
    cov_coeff: float = Field(1.0, ge=0, description="nu, weight of the covariance term")
    gamma: float = Field(1.0, gt=0, description="target std of each embedding dimension")
    eps: float = Field(1e-4, gt=0, description="added to the variance before the square root")
    variance_branches: Literal["sum", "mean"] = Field("sum", description="the two branches' variance hinges added "
                                                      "(Eq. 6, paper) or averaged (code)")

    code_reading: ClassVar[dict[str, Any]] = {"variance_branches": "mean"}


def variance_hinge(z: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """Mean over dimensions of max(0, gamma - std): keeps every embedding dimension spread (also MV-MR's L1)."""
    std = torch.sqrt(z.var(dim=0) + eps)  # Eq. 2: S(x, eps) = sqrt(Var(x) + eps), unbiased Var
    return F.relu(gamma - std).mean()  # Eq. 1: v(Z) = 1/d sum_j max(0, gamma - S(z^j, eps))


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)  # Eq. 3: C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d  # Eq. 4: 1/d sum_{i != j} C_ij^2


@fp32_loss
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float,
    std_coeff: float,
    cov_coeff: float,
    gamma: float,
    eps: float,
    variance_branches: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the VICReg loss and its unweighted terms ``invariance``, ``variance``, ``covariance``;
    ``variance_branches`` "mean" halves the variance term (the official code's reading of Eq. 6)."""
    invariance = F.mse_loss(z1, z2)  # Eq. 5 (mean over samples and dimensions)
    variance = variance_hinge(z1, gamma, eps) + variance_hinge(z2, gamma, eps)  # Eq. 6: v(Z) + v(Z')
    if variance_branches == "mean":
        variance = variance / 2  # code: mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2
    covariance = _covariance(z1) + _covariance(z2)  # c(Z) + c(Z')
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance  # Eq. 6
    terms = {"invariance": invariance.detach(), "variance": variance.detach(), "covariance": covariance.detach()}
    return loss, terms


class VICReg(Method):
    name: ClassVar[str] = "vicreg"
    Params: ClassVar[type[MethodParams]] = VICRegParams
    recipe: ClassVar[str] = "byol"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "backbone": {},
        "optimizer": {"name": "lars", "lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6, "momentum": 0.9,
                      "exclude_bias_bn": True},
        "schedule": {"warmup_epochs": 10},
        "augment": "vicreg",
    }}
    shared_weights_reason: ClassVar[str] = ""

    def __init__(
        self, backbone: nn.Module, params: VICRegParams, *, num_classes: int, image_shape: tuple[int, int, int],
        backbone_b: nn.Module | None = None,
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector)
        self.branch_b = second_branch(backbone_b, lambda dim: mlp(dim, params.projector))

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """VICReg loss of the two crops; also logs its three unweighted terms."""
        first = self.projector(self.backbone(views.crops[0]))
        x2 = views.crops[1]
        second = self.projector(self.backbone(x2)) if self.branch_b is None else self.branch_b(x2)
        z1, z2 = gather_with_grad(first), gather_with_grad(second)  # statistics of the global batch
        p = self.params
        loss, terms = vicreg_loss(z1, z2, p.sim_coeff, p.std_coeff, p.cov_coeff, p.gamma, p.eps, p.variance_branches)
        return StepOutput(loss, logs=terms)

"""W-MSE: Ermolov, Siarohin, Sangineto & Sebe, "Whitening for Self-Supervised Representation
Learning", ICML 2021.

d views of each of N images go through a shared backbone and projector. The embeddings are
whitened (zero mean, identity covariance) and only then pulled together: positives are compared
by the squared distance of their L2-normalised whitened vectors, 2 - 2 cos, averaged over the
N d (d - 1) / 2 positive pairs. Whitening scatters the batch over the unit sphere, which prevents
collapse without negatives. It is Cholesky whitening, z = L^{-1} (v - mu) with Sigma = L L^T,
computed on sub-batches: the images are shuffled and split into slices of ``w_size``, and each
view's slice is whitened on its own; gradients flow through the whitening. With ``w_iter`` > 1
the split is redrawn that many times and the losses are averaged.

Ambiguities resolved:
- covariance shrinkage: none, the official ``w_eps`` default 0 (Cholesky of the plain slice
  covariance, 1 / (M - 1)); the official code blends (1 - eps) Sigma + eps I: ``w_eps``.
- learning rate: Adam 1e-3, the official default, unscaled; the README's CIFAR runs pass 3e-3:
  ``optimizer.lr=3e-3``.
- the projector runs once on the features of all views together, so its BN statistics pool the
  views, as in the official code; no option.
- several processes per cell: each whitens the slices of its own share of the batch, as the
  official code does per GPU; no option.
- number of views d: every crop of the recipe ("cifar" gives W-MSE 2; a recipe with four views
  gives W-MSE 4); choose it with ``augment``.
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
from bench.models.heads import HeadSpec, mlp, out_dim


class WMSEParams(MethodParams):
    name: Literal["wmse"] = "wmse"
    projector: HeadSpec = Field("1024-64", description="projector widths (hidden BN, plain output)")
    w_size: int = Field(128, ge=2, description="images per whitening slice; must exceed the embedding width")
    w_iter: int = Field(1, ge=1, description="random splits into slices per step; their losses are averaged")
    w_eps: float = Field(0.0, ge=0, lt=1, description="shrinkage: whiten with (1 - w_eps) Sigma + w_eps I")


@fp32_loss
def cholesky_whiten(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Whiten the rows of each (..., M, K) slice: z = L^{-1} (v - mu), L L^T = (1 - eps) Sigma + eps I; NaN rows for a
    slice whose covariance is singular."""
    m, k = v.shape[-2:]
    vc = v - v.mean(dim=-2, keepdim=True)  # v - mu_V
    sigma = vc.mT @ vc / (m - 1)  # Sigma_V = 1/(M-1) sum_k (v_k - mu_V)(v_k - mu_V)^T
    eye = torch.eye(k, dtype=v.dtype, device=v.device)
    chol, info = torch.linalg.cholesky_ex((1 - eps) * sigma + eps * eye)  # Sigma_V = L L^T (shrunk by eps)
    z = torch.linalg.solve_triangular(chol, vc.mT, upper=False).mT  # z = W_V (v - mu_V), W_V = L^{-1}
    # a singular slice (the embeddings lost rank) whitens to NaN: the engine stops at its next log interval with
    # WMSE.divergence_hint, and no step reads ``info`` on the host
    return torch.where((info > 0)[..., None, None], torch.nan, z)


@fp32_loss
def wmse_loss(v: torch.Tensor, perm: torch.Tensor, w_size: int, eps: float) -> torch.Tensor:
    """W-MSE loss of embeddings ``v`` (d views x N images x K) whitened on the slices of ``perm``.

    ``perm`` orders the N images; consecutive runs of ``w_size`` of them form one slice, the same
    for every view. N must be a multiple of ``w_size``.
    """
    views, n, k = v.shape
    slices = v[:, perm].reshape(views, n // w_size, w_size, k)  # each view's batch cut into the same slices
    z = F.normalize(cholesky_whiten(slices, eps), dim=-1).reshape(views, n, k)  # z = Whitening(v), then z / |z|
    dist = [2 - 2 * (z[i] * z[j]).sum(dim=-1) for i in range(views) for j in range(i + 1, views)]  # |zi - zj|^2
    return torch.cat(dist).mean()  # 2 / (N d (d-1)) sum over the positive pairs


class WMSE(Method):
    name: ClassVar[str] = "wmse"
    Params: ClassVar[type[MethodParams]] = WMSEParams
    recipe: ClassVar[str] = "cifar"
    divergence_hint: ClassVar[str] = ("or the covariance of a whitening slice is singular (the embeddings lost rank): "
                                      "shrink it with method.w_eps (e.g. 0.01) or raise method.w_size")
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "adam",
        "lr": 1e-3,
        "lr_scaling": "none",
        "weight_decay": 1e-6,
        "exclude_bias_bn": False,
    }

    def __init__(self, backbone: nn.Module, params: WMSEParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        width = out_dim(backbone.out_dim, params.projector)
        if params.w_size <= width:
            raise ConfigError(
                f"wmse: method.w_size {params.w_size} must exceed the embedding width {width} "
                f"(method.projector '{params.projector}'), or the slice covariance is singular; "
                f"raise w_size (e.g. {2 * width}) or narrow the projector"
            )
        self.projector = mlp(backbone.out_dim, params.projector)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """W-MSE loss over all crops, averaged over ``w_iter`` random splits into slices."""
        p = self.params
        n = views.crops[0].shape[0]
        if n % p.w_size != 0:
            raise ConfigError(
                f"wmse: the batch of {n} images (per process) is not a multiple of method.w_size {p.w_size}; "
                f"set batch_size to a multiple of {p.w_size} x the processes per cell, or change method.w_size"
            )
        features = torch.cat([self.backbone(x) for x in views.crops])
        v = self.projector(features).view(len(views.crops), n, -1)
        losses = [wmse_loss(v, torch.randperm(n, device=v.device), p.w_size, p.w_eps) for _ in range(p.w_iter)]
        return StepOutput(torch.stack(losses).mean())

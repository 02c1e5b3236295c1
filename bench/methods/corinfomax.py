"""CorInfoMax: Ozsoy, Hamdan, Arik, Yuret & Erdogan, "Self-Supervised Learning with an Information
Maximization Criterion", NeurIPS 2022 (equations numbered as in S. Ozsoy's MSc thesis, Koc 2022).

Two views go through a shared backbone and projector; the projector output is L2-normalised per
sample. The loss maximises the log-determinant mutual information between the views, reduced to
a "big-bang" term, -(logdet(R1 + eps I) + logdet(R2 + eps I)) / D, that spreads the embeddings
of each branch over all D dimensions, plus an "attraction" term, alpha times the mean squared
distance of the views. R1 and R2 are running covariances (one per branch) with forgetting factor
lambda, the weight of the past: the mean is updated first and centres the batch; the covariance
uses 1/N. They start at R = I, mu = 0, are kept in float64 and detached after every step, so
gradients flow only through the current batch's term (including its mean). The training LDMI,
4 LDMI / D of Eq. 3.6 from the running R1, R2 and cross-covariance R12, is logged as ``ldmi``.

Defaults are the thesis' best CIFAR-100 setup. The other datasets (thesis Sec. 5.2, App. B.2);
``batch`` and ``lr`` (SGD peak) are run settings, the rest are method fields:

    ==============  =====  =====  =============  ============  =====  ===
    dataset         alpha  lambd  projector      projector_bn  batch  lr
    ==============  =====  =====  =============  ============  =====  ===
    CIFAR-10        250    0.01   2048-2048-64   False         512    0.5
    CIFAR-100       1000   0.01   4096-4096-128  False         512    0.5
    Tiny ImageNet   500    0.1    4096-4096-128  False         1024   0.5
    ImageNet-100    500    0.1    4096-4096-128  False         1024   1.0
    ImageNet-1K     2000   0.01   8192-8192-512  True          1536   0.2
    ==============  =====  =====  =============  ============  =====  ===

Ambiguities resolved:
- learning rate: the thesis' 0.5 was tuned at batch 512 and is used unscaled at any batch
  (``lr_scaling`` "none"); to scale it linearly from batch 512: ``optimizer.lr=0.25`` with
  ``optimizer.lr_scaling=linear``.
- lambda on ImageNet-100 / -1K: the thesis text (0.1 / 0.01); the official run commands use
  0.01 / 0.1: ``lambd``.
- one forgetting factor for the mean and the covariance (the code's two flags are always equal);
  no option.
- training LDMI: R12 by Eq. 4.6, centred with the updated means and sharing R1, R2 with the loss;
  the official tracker keeps its own statistics centred with the previous means. It is only a
  logged metric; no option.
- log-determinant: LU-based ``torch.logdet`` in float64 without symmetrisation, as the thesis
  and the code; no option.
- weight decay on every parameter (the thesis names no exclusion): ``optimizer.exclude_bias_bn``.

Code reading: none (``reading: code`` changes nothing). The loss above is the thesis' practical one (Sec. 5.2.5,
Algorithm 1) and the code's; where they differ it is in settings: lambda on ImageNet-100 / -1K (``lambd``) and
the LDMI tracker (a logged metric).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.models.heads import HeadSpec, mlp, out_dim
from bench.core.collectives import gather_with_grad


class CorInfoMaxParams(MethodParams):
    name: Literal["corinfomax"] = "corinfomax"
    projector: HeadSpec = Field(
        "4096-4096-128", description="projector widths (Linear-ReLU hidden layers, last Linear without bias)"
    )
    projector_bn: bool = Field(False, description="BN after each hidden Linear (the thesis' ImageNet-1K projector)")
    alpha: float = Field(1000.0, ge=0, description="attraction coefficient: weight of the MSE between the views")
    lambd: float = Field(
        0.01, ge=0, lt=1, description="forgetting factor: weight of the past in the running means and covariances"
    )
    eps: float = Field(1e-8, ge=0, description="jitter eps I added inside every log-determinant")


class CorInfoMaxState(NamedTuple):
    """Running statistics (float64): per-branch means and covariances, and the cross-covariance."""

    mu1: torch.Tensor
    r1: torch.Tensor
    mu2: torch.Tensor
    r2: torch.Tensor
    r12: torch.Tensor


def initial_state(dim: int, device: torch.device | None = None) -> CorInfoMaxState:
    """App. B.2: R1 = R2 = I, R12 = 0, mu1 = mu2 = 0."""
    eye = torch.eye(dim, dtype=torch.float64, device=device)
    zeros = torch.zeros(dim, dtype=torch.float64, device=device)
    return CorInfoMaxState(zeros, eye, zeros.clone(), eye.clone(), torch.zeros_like(eye))


def _running_moments(
    z: torch.Tensor, mu: torch.Tensor, r: torch.Tensor, lambd: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Updated mean, updated covariance and the centred batch of one branch, in float64."""
    z = z.double()
    mu_new = lambd * mu + (1 - lambd) * z.mean(dim=0)  # Eq. 4.5: mu[l] = lambda mu[l-1] + (1-lambda) Z 1 / N
    zc = z - mu_new  # Eq. 4.4: centre with the updated mean
    r_new = lambd * r + (1 - lambd) * zc.T @ zc / z.shape[0]  # Eq. 4.3: R[l] = lambda R[l-1] + (1-lambda) Zc Zc^T / N
    return mu_new, r_new, zc


def _training_ldmi(r1: torch.Tensor, r2: torch.Tensor, r12: torch.Tensor, eps: float) -> torch.Tensor:
    """4 LDMI / D from the running covariances (Eq. 3.6 scaled by 4 / D)."""
    eye = eps * torch.eye(r1.shape[0], dtype=r1.dtype, device=r1.device)
    re12 = r1 - r12 @ torch.linalg.inv(r2 + eye) @ r12.T  # error covariance of z1 given z2 (Schur complement)
    re21 = r2 - r12.T @ torch.linalg.inv(r1 + eye) @ r12  # error covariance of z2 given z1
    logdets = torch.logdet(r1 + eye) + torch.logdet(r2 + eye) - torch.logdet(re12 + eye) - torch.logdet(re21 + eye)
    return logdets / r1.shape[0]


@fp32_loss
def corinfomax_loss(
    z1: torch.Tensor, z2: torch.Tensor, state: CorInfoMaxState, alpha: float, lambd: float, eps: float
) -> tuple[torch.Tensor, CorInfoMaxState, dict[str, torch.Tensor]]:
    """Return the loss, the updated (detached) statistics and the terms ``big_bang``, ``attraction``, ``ldmi``.

    ``z1``, ``z2`` are the L2-normalised projections (N x D) of the two views; ``state`` holds the
    statistics after the previous step and is not modified.
    """
    dim = z1.shape[1]
    mu1, r1, zc1 = _running_moments(z1, state.mu1, state.r1, lambd)
    mu2, r2, zc2 = _running_moments(z2, state.mu2, state.r2, lambd)
    eye = eps * torch.eye(dim, dtype=torch.float64, device=z1.device)
    big_bang = -(torch.logdet(r1 + eye) + torch.logdet(r2 + eye)) / dim  # Alg. 1: -(logdet R1 + logdet R2) / D
    attraction = F.mse_loss(z1, z2)  # Alg. 1: mean over the N x D entries of (z1 - z2)^2
    loss = (big_bang + alpha * attraction).to(z1.dtype)  # Sec. 5.2.5: Eq. 4.2 with 2 / (eps N) replaced by alpha
    with torch.no_grad():
        r12 = lambd * state.r12 + (1 - lambd) * zc1.T @ zc2 / z1.shape[0]  # Eq. 4.6 (LDMI tracking only)
        new_state = CorInfoMaxState(mu1.detach(), r1.detach(), mu2.detach(), r2.detach(), r12)
        ldmi = _training_ldmi(new_state.r1, new_state.r2, r12, eps)
    terms = {"big_bang": big_bang.detach(), "attraction": attraction.detach(), "ldmi": ldmi}
    return loss, new_state, terms


class CorInfoMax(Method):
    name: ClassVar[str] = "corinfomax"
    Params: ClassVar[type[MethodParams]] = CorInfoMaxParams
    recipe: ClassVar[str] = "byol"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.5,
        "lr_scaling": "none",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }

    def __init__(
        self, backbone: nn.Module, params: CorInfoMaxParams, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector, hidden_bn=params.projector_bn, last_bias=False)
        for key, value in initial_state(out_dim(backbone.out_dim, params.projector))._asdict().items():
            self.register_buffer(key, value)

    @property
    def state(self) -> CorInfoMaxState:
        """The running statistics after the last training step."""
        return CorInfoMaxState(*(getattr(self, key) for key in CorInfoMaxState._fields))

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """CorInfoMax loss of the two crops; in training mode also advances the running statistics."""
        # the global batch: covariances and running statistics as one process would compute them
        z1, z2 = (gather_with_grad(F.normalize(self.projector(self.backbone(x)), dim=1)) for x in views.crops[:2])
        p = self.params
        loss, new_state, terms = corinfomax_loss(z1, z2, self.state, p.alpha, p.lambd, p.eps)
        if self.training:
            for buffer, value in zip(self.state, new_state):
                buffer.copy_(value)
        return StepOutput(loss, logs=terms)

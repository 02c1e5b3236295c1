"""MoCo v2: Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive Learning",
arXiv 2020, on top of MoCo (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020).

A query encoder (backbone and a 2-layer MLP projector without BN) embeds one crop; a key encoder,
a momentum copy updated as theta_k <- m theta_k + (1 - m) theta_q and never trained by the loss,
embeds the other crop. InfoNCE over the L2-normalised embeddings contrasts each query with its own
key (the positive) and with the K keys of earlier batches held in a FIFO queue (the negatives). After
every optimizer step the batch's keys replace the oldest ones in the queue; the queue starts as random
unit vectors. MoCo's shuffled BN is emulated on one device: queries and keys are computed in
``bn_splits`` groups, each with its own BN statistics (the paper's per-GPU BN), and the keys are shuffled
across groups first, so a query and its positive key never share batch statistics (without this the
model "cheats" through BN, Sec. 3.3, and on a single device it does not learn).

Ambiguities resolved:
- one-sided loss as in the paper (queries from crop 1, keys from crop 2); solo-learn's MoCo v2+
  averages both directions and then both crops' keys are enqueued: ``symmetric=True``.
- momentum: constant m = 0.999 as in the paper; a cosine schedule from m to 1 (BYOL's, used by
  solo-learn's MoCo v2+ with m = 0.99): ``momentum_schedule="cosine"``.
- temperature: 0.2, MoCo v2's value; MoCo v1 used 0.07: ``temperature=0.07``.
- shuffled BN: ``bn_splits=8`` groups, as the paper's 8 GPUs; ``bn_splits=1`` turns it off.
- projector hidden width: 2048, the ResNet-50 feature width of the paper; the official code uses the
  backbone's width, e.g. ``projector="512-128"`` for a ResNet-18.
- several processes: every rank enqueues the keys of the global batch, so the queues stay equal; the
  shuffled BN stays the per-process ``bn_splits`` emulation (no shuffle across processes).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.branches import MOMENTUM_TARGET
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.ema import EmaPair, cosine_momentum, frozen_copy
from bench.models.heads import HeadSpec, mlp, out_dim
from bench.core.collectives import gather_with_grad


class MoCoV2Params(MethodParams):
    name: Literal["mocov2"] = "mocov2"
    projector: HeadSpec = Field("2048-128", description="projector widths (Linear-ReLU-Linear, no BN)")
    queue_size: int = Field(65536, ge=1, description="K, the number of negative keys kept in the FIFO queue")
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature tau (MoCo v2)")
    momentum: float = Field(0.999, ge=0, le=1, description="m, EMA decay of the key encoder")
    momentum_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant m (paper) or a cosine schedule from m to 1"
    )
    symmetric: bool = Field(False, description="average the loss over both crop orders (solo-learn's MoCo v2+)")
    bn_splits: int = Field(8, ge=1, description="shuffled BN on one device: BN groups per batch (1: off)")


@fp32_loss
def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries ``q`` against their keys ``k`` and the (K, D) ``queue`` of unit negatives.

    ``q`` and ``k`` are L2-normalised here; ``k`` and ``queue`` get no gradient.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # Eq. 1: q . k+, one logit per query
    negatives = q @ queue.detach().T  # Eq. 1: q . k_i for the K queued keys
    logits = torch.cat([positive, negatives], dim=1) / temperature  # K + 1 logits, the positive first
    targets = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)  # Eq. 1: -log exp(q.k+/tau) / sum_{i=0}^{K} exp(q.k_i/tau)


class MoCoV2(Method):
    name: ClassVar[str] = "mocov2"
    Params: ClassVar[type[MethodParams]] = MoCoV2Params
    recipe: ClassVar[str] = "simclr"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.03,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }
    shared_weights_reason: ClassVar[str] = MOMENTUM_TARGET

    def __init__(
        self, backbone: nn.Module, params: MoCoV2Params, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector, hidden_bn=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        dim = out_dim(backbone.out_dim, params.projector)
        self.register_buffer("queue", F.normalize(torch.randn(params.queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum(self, step: int, total_steps: int) -> float:
        """The key encoder's EMA decay m at ``step``."""
        p = self.params
        return cosine_momentum(p.momentum, step, total_steps) if p.momentum_schedule == "cosine" else p.momentum

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """InfoNCE against the queue (one-sided or symmetrised); also logs the current momentum. Its state: this step's
        keys, which ``update_state`` enqueues."""
        x1, x2 = views.crops[:2]
        tau = self.params.temperature
        q1, k2 = self._query(x1), self._key(x2)
        if self.params.symmetric:
            q2, k1 = self._query(x2), self._key(x1)
            loss = (moco_loss(q1, k2, self.queue, tau) + moco_loss(q2, k1, self.queue, tau)) / 2
            keys = torch.cat([k1, k2])
        else:
            loss = moco_loss(q1, k2, self.queue, tau)
            keys = k2
        momentum = torch.tensor(self.momentum(step, total_steps), device=loss.device)
        return StepOutput(loss, logs={"momentum": momentum}, state={"keys": keys})

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        """The query embedding, computed group by group (each group has its own BN statistics)."""
        return torch.cat([self.projector(self.backbone(chunk)) for chunk in x.chunk(self.params.bn_splits)])

    @torch.no_grad()
    def _key(self, x: torch.Tensor) -> torch.Tensor:
        """The key encoder's embedding on shuffled groups, returned in the input order; it is not trained."""
        order = torch.randperm(len(x), device=x.device)
        keys = torch.cat([self.key_projector(self.key_backbone(chunk)) for chunk in x[order].chunk(self.params.bn_splits)])
        return keys[order.argsort()]

    def ema_pairs(self) -> list[EmaPair]:
        """theta_k <- m theta_k + (1 - m) theta_q for the key backbone and projector."""
        return [EmaPair(self.backbone, self.key_backbone), EmaPair(self.projector, self.key_projector)]

    def update_state(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        """Enqueue this step's keys over the oldest ones (after the key encoder's EMA)."""
        self._enqueue(gather_with_grad(outputs.state["keys"]))  # the global batch's keys: one queue on every rank

    def _enqueue(self, keys: torch.Tensor) -> None:
        size = len(self.queue)
        keys = keys[-size:]  # more keys than slots: only the newest K survive
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = F.normalize(keys.to(self.queue.dtype), dim=1)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

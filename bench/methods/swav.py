"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020.

Each crop is embedded (backbone, projector, L2 normalisation) and scored against K learnable
prototypes. Online codes q are computed for the global crops only, without gradient, by a few
Sinkhorn-Knopp iterations that split the batch equally among the prototypes; every other crop then
predicts a global crop's code from its own softmax over the prototype scores (swapped prediction).
Prototypes are L2-normalised before every forward. An optional queue of recent global-crop
embeddings joins the Sinkhorn input, for small batches. Multi-crop: 2 global + V local crops.

Ambiguities resolved:
- prototype freezing: the official code freezes the prototypes for its first 313 iterations (one
  ImageNet epoch at batch 4096; the paper says "the first epoch"): ``freeze_prototypes_steps=0``
  disables it, short runs should lower it.
- queue: off by default (the paper uses 3840 stored features at batch 256): ``queue_length=3840``;
  it joins the Sinkhorn input once full (the official code also waits until epoch 15).
- optimizer: LARS over all parameters (the official LARC adapts biases and BN too), lr 0.6 at batch
  256, wd 1e-6: ``exclude_bias_bn=True`` for the usual exclusion.
- several processes: the Sinkhorn sums run over the global batch (all-reduced, as the official code);
  the queue is per process, so ``queue_length`` counts one process's stored embeddings (official too).

ViT (``method.preset=vit``): MoCo v3's benchmark of SwAV on ViT (Chen, Xie & He 2021, Sec. 6.1, App. A): no BN in
the heads, two crops (Table 4: no multi-crop), AdamW with 40 warm-up epochs, random (frozen) patch projection and
sin-cos position embedding. Its lr ("the largest stable lr") and weight decay are not published: the preset uses
MoCo v3's own, 1.5e-4 x batch / 256 and 0.1; prototypes and epsilon keep their ResNet defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.multicrop import check_global_crops, crop_pair_cross_entropy, multicrop_forward
from bench.models.heads import HeadSpec, mlp, out_dim
from bench.core.collectives import all_reduce, world_size


class SwAVParams(MethodParams):
    name: Literal["swav"] = "swav"
    projector: HeadSpec = Field("2048-128", description="projection head widths (hidden BN, plain output)")
    projector_bn: bool = Field(True, description="BN in the projector's hidden layers (MoCo v3's SwAV on ViT has none)")
    num_prototypes: int = Field(3000, ge=1, description="K, number of prototypes")
    temperature: float = Field(0.1, gt=0, description="tau of the prototype softmax")
    epsilon: float = Field(0.05, gt=0, description="entropy weight eps of the Sinkhorn-Knopp codes")
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations")
    global_crops: int = Field(2, ge=1, description="the first crops are global: codes come from these")
    queue_length: int = Field(0, ge=0, description="stored global-crop embeddings per global crop; 0: no queue")
    freeze_prototypes_steps: int = Field(313, ge=0, description="optimizer steps during which prototypes get no gradient")


@fp32_loss
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Codes (N, K) from prototype scores (N, K): each sample's code sums to 1, each prototype gets N / K.

    With several processes the N samples are those of all ranks (each passes its own rows, all the same
    number): the sums over samples are all-reduced, and each rank gets its rows' codes.
    """
    q = torch.exp((scores - all_reduce(scores.max(), "max")) / epsilon).T  # Q = exp(C^T Z / eps), K x N (the max shift cancels)
    q = q / all_reduce(q.sum())
    k, n = q.shape[0], q.shape[1] * world_size()
    for _ in range(iterations):
        q = q / all_reduce(q.sum(dim=1, keepdim=True)) / k  # Diag(u): Q 1_N = 1/K 1_K
        q = q / q.sum(dim=0, keepdim=True) / n  # Diag(v): Q^T 1_K = 1/N 1_N
    return (q * n).T  # each column (sample) rescaled to sum to 1


@fp32_loss
def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Swapped prediction over all crops: scores (V, B, K) = z_v^T C, codes (G, B, K) of the global crops."""
    log_p = F.log_softmax(scores / temperature, dim=-1)  # p_v^(k) = exp(z_v^T c_k / tau) / sum_k' exp(z_v^T c_k' / tau)
    return crop_pair_cross_entropy(codes, log_p)  # L = sum_i sum_{v != i} l(z_v, q_i), averaged over pairs


class SwAV(Method):
    name: ClassVar[str] = "swav"
    Params: ClassVar[type[MethodParams]] = SwAVParams
    recipe: ClassVar[str] = "multicrop"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "lars",
        "lr": 0.6,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"projector_bn": False},
        "backbone": {"pos_embed": "sincos", "freeze_patch_embed": True, "weight_init": "moco"},
        "optimizer": {"name": "adamw", "lr": 1.5e-4, "lr_scaling": "linear", "weight_decay": 0.1, "exclude_bias_bn": False,
                      "exclude_tokens": False},
        "schedule": {"warmup_epochs": 40},
        "augment": "byol",
    }}

    def __init__(self, backbone: nn.Module, params: SwAVParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        dim = out_dim(backbone.out_dim, params.projector)
        self.projector = mlp(backbone.out_dim, params.projector, hidden_bn=params.projector_bn)
        self.prototypes = nn.Linear(dim, params.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(params.global_crops, params.queue_length, dim))

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Swapped-prediction loss over all crops, codes from the global crops (and the full queue). Its state (with a
        queue): this step's global-crop embeddings, which ``update_state`` pushes into the queue."""
        p = self.params
        check_global_crops("swav", len(views.crops), p.global_crops)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(multicrop_forward(lambda x: self.projector(self.backbone(x)), views.crops), dim=-1)
        frozen = step < p.freeze_prototypes_steps
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight
        scores = z @ weight.T  # z_v^T C for every crop, (V, B, K)
        # the queue takes one batch per step from step 0, so it is full from the step that has pushed queue_length
        # embeddings; counting steps on the host reads no tensor (a resumed run restores the queue and the step)
        queue_full = p.queue_length > 0 and step * views.crops[0].shape[0] >= p.queue_length
        with torch.no_grad():
            codes = torch.stack([self._codes(scores[i], i, queue_full) for i in range(p.global_crops)])
        state = {"embeddings": z[: p.global_crops].detach().float()} if p.queue_length else {}
        loss = swav_loss(scores, codes, p.temperature)
        return StepOutput(loss, logs={"queue_in_use": torch.tensor(float(queue_full), device=loss.device)}, state=state)

    def _codes(self, scores: torch.Tensor, crop: int, queue_full: bool) -> torch.Tensor:
        """Sinkhorn codes of one global crop's batch; the stored embeddings join when the queue is full."""
        p = self.params
        batch = scores.shape[0]
        if queue_full:
            stored = self.queue[crop] @ self.prototypes.weight.T
            scores = torch.cat([scores.float(), stored])
        return sinkhorn_knopp(scores, p.epsilon, p.sinkhorn_iterations)[:batch]

    def update_state(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        """Push this step's global-crop embeddings into the queue, newest first (no queue: nothing)."""
        if not self.params.queue_length:
            return
        length, embeddings = self.params.queue_length, outputs.state["embeddings"]
        self.queue.copy_(torch.cat([embeddings, self.queue], dim=1)[:, :length])

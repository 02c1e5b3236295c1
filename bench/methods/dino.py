"""DINO: Caron, Touvron, Misra, Jegou, Mairal, Bojanowski & Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021.

Self-distillation without labels: a student (backbone + DINO head) matches, by cross-entropy, the
output distribution of a teacher that is an exponential moving average of the student (momentum
raised from 0.996 to 1 on a cosine schedule). The teacher sees only the global crops, the student
every crop; each (teacher crop, different student crop) pair is one term. Collapse is avoided by
centring (subtracting a running mean of the teacher outputs, momentum 0.9, updated after each step)
and sharpening (a low teacher temperature). The head is an MLP with GELU, an L2 normalisation and a
weight-normalised last layer with its norm fixed to 1.

Ambiguities resolved:
- teacher temperature: 0.04 throughout, the official ResNet-50 run; the ViT runs warm it up from 0.04
  to 0.07 over 30 epochs: ``teacher_temp=0.07, teacher_temp_warmup=...`` (a fraction of the steps).
- optimizer: the official ResNet-50 recipe, SGD lr 0.03 at batch 256, wd 1e-4, no decay on biases and
  norms; the paper's LARS reading is ``name=lars, lr=0.3, weight_decay=1e-6`` in the suite.
- last layer: trained from step 0 with its row norms fixed to 1; the official code freezes it for its
  first epoch (``freeze_last_layer``, a fraction of the steps: 0.01 is 1 of 100 epochs) and can learn
  the norms (``norm_last_layer=false``).
- head: no BatchNorm, the official ResNet-50 default; its ``use_bn_in_head`` is ``head_bn=true``.

ViT (``method.preset=vit``): the official ViT-S/16 recipe (main_dino.py, README "Boosting DINO"): AdamW, lr 5e-4 x
batch / 256 after 10 warm-up epochs, cosine to 1e-6 (``final_lr`` 5e-4 of the peak at batch 1024), weight decay
cosine 0.04 -> 0.4 on the decayed groups (biases and norms excluded, the class token and position embedding
decayed), each parameter's gradient clipped to norm 3, teacher temperature 0.04 -> 0.07 over the first 30 of 300
epochs, the last layer frozen for the first epoch and its norms learned (``norm_last_layer=false``), drop path 0.1
in the student (the teacher copy runs without), and the 2 x 224 + 8 x 96 multi-crop (``augment=dino``). The
fractions of the run assume 300 epochs. Not reproduced: DINO evaluates the teacher (the harness evaluates the
student backbone) and probes the concatenated last-4 class tokens while its kNN uses the last one
(``backbone.eval_features=last4_cls`` applies to every evaluation). For 32 px images with patch 4 the local crops
must be 16 px (``size_fraction: 0.5``), not 96/224 of 32.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.branches import MOMENTUM_TARGET
from bench.methods.ema import EmaPair, cosine_momentum, frozen_copy
from bench.methods.multicrop import check_global_crops, crop_pair_cross_entropy, multicrop_forward
from bench.models.heads import HeadSpec, parse_spec
from bench.core.collectives import all_reduce


class DINOParams(MethodParams):
    name: Literal["dino"] = "dino"
    projector: HeadSpec = Field("2048-2048-256", description="head MLP widths (GELU between, last is the bottleneck)")
    out_dim: int = Field(65536, ge=1, description="K, width of the weight-normalised last layer")
    global_crops: int = Field(2, ge=1, description="the first crops are global: the teacher sees only these")
    momentum_base: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at step 0, cosine to 1")
    student_temp: float = Field(0.1, gt=0, description="tau_s of the student softmax")
    teacher_temp: float = Field(0.04, gt=0, description="tau_t of the teacher softmax after warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="tau_t at step 0, raised linearly to teacher_temp")
    teacher_temp_warmup: float = Field(0.0, ge=0, le=1, description="fraction of the steps the tau_t warm-up lasts")
    center_momentum: float = Field(0.9, ge=0, le=1, description="m of the EMA of the teacher-output centre")
    head_bn: bool = Field(False, description="BatchNorm after each hidden layer of the head (official use_bn_in_head)")
    norm_last_layer: bool = Field(True, description="fix the norm g of the last layer's rows to 1; false learns g")
    freeze_last_layer: float = Field(0.0, ge=0, le=1, description="fraction of the steps the last layer is not trained")


class DINOHead(nn.Module):
    """Linear layers of ``spec`` with (BatchNorm and) GELU between, L2 normalisation, then a bias-free
    weight-normalised layer (g = 1, or learned); ``freeze_last`` stops the gradient into that layer."""

    def __init__(self, in_dim: int, spec: str, out_dim: int, batch_norm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for width in parse_spec(spec):
            layers += [nn.Linear(in_dim, width), *([nn.BatchNorm1d(width)] if batch_norm else []), nn.GELU()]
            in_dim = width
        self.mlp = nn.Sequential(*layers[:-(2 if batch_norm else 1)])
        self.last = nn.Linear(in_dim, out_dim, bias=False)
        self.last_g = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        v, g = self.last.weight, self.last_g
        if freeze_last:
            v, g = v.detach(), None if g is None else g.detach()
        w = F.normalize(v, dim=1)  # weight norm: w_k = g_k v_k / ||v_k||
        return F.linear(x, w if g is None else g * w)


def teacher_temperature(step: int, total_steps: int, warmup_temp: float, temp: float, warmup_fraction: float) -> float:
    """tau_t: linear from ``warmup_temp`` at step 0 to ``temp`` after ``warmup_fraction * total_steps`` steps."""
    warmup_steps = warmup_fraction * total_steps
    if step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps


@fp32_loss
def dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, centre: torch.Tensor, student_temp: float, teacher_temp: float
) -> torch.Tensor:
    """Mean over pairs (t, s), s != t, of H(P_t, P_s); student (V, B, K) all crops, teacher (G, B, K) the first G."""
    p_teacher = F.softmax((teacher - centre) / teacher_temp, dim=-1).detach()  # Eq. 1 + centring: P_t(x) on g_t(x) - c
    log_p_student = F.log_softmax(student / student_temp, dim=-1)  # Eq. 1: log P_s(x') at tau_s
    return crop_pair_cross_entropy(p_teacher, log_p_student)  # Eq. 3: sum over x in globals, x' != x of H(P_t, P_s)


class DINO(Method):
    name: ClassVar[str] = "dino"
    Params: ClassVar[type[MethodParams]] = DINOParams
    recipe: ClassVar[str] = "multicrop"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.03,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {"vit": {
        "method": {"teacher_temp": 0.07, "warmup_teacher_temp": 0.04, "teacher_temp_warmup": 30 / 300, "norm_last_layer": False,
                   "freeze_last_layer": 1 / 300},
        "backbone": {"drop_path_rate": 0.1},
        "optimizer": {"name": "adamw", "lr": 5e-4, "lr_scaling": "linear", "weight_decay": 0.04, "weight_decay_end": 0.4,
                      "exclude_bias_bn": True, "exclude_tokens": False},
        "schedule": {"warmup_epochs": 10, "final_lr": 5e-4},
        "train": {"grad_clip": 3.0, "grad_clip_mode": "per_param"},
        "augment": "dino",
    }}
    shared_weights_reason: ClassVar[str] = MOMENTUM_TARGET

    def __init__(self, backbone: nn.Module, params: DINOParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.head = DINOHead(backbone.out_dim, params.projector, params.out_dim, params.head_bn, params.norm_last_layer)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("centre", torch.zeros(params.out_dim))

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Student on all crops, teacher on the global crops; also logs tau_t and the EMA momentum. Its state: the
        global batch's mean teacher output, which ``update_state`` moves the centre towards."""
        p = self.params
        check_global_crops("dino", len(views.crops), p.global_crops)
        freeze_last = step < p.freeze_last_layer * total_steps
        student = multicrop_forward(lambda x: self.head(self.backbone(x), freeze_last), views.crops)
        with torch.no_grad():  # stop-gradient: the teacher is not trained by the loss
            teacher = multicrop_forward(lambda x: self.teacher_head(self.teacher_backbone(x)), views.crops[: p.global_crops])
        batch_centre = all_reduce(teacher.to(self.centre.dtype).mean(dim=(0, 1)), "mean")  # the global batch's mean
        tau_t = teacher_temperature(step, total_steps, p.warmup_teacher_temp, p.teacher_temp, p.teacher_temp_warmup)
        loss = dino_loss(student, teacher, self.centre, p.student_temp, tau_t)
        logs = {"teacher_temp": torch.tensor(tau_t, device=loss.device),
                "momentum": torch.tensor(self.momentum(step, total_steps), device=loss.device)}
        return StepOutput(loss, logs=logs, state={"batch_centre": batch_centre})

    def ema_pairs(self) -> list[EmaPair]:
        """Teacher EMA theta_t <- l theta_t + (1 - l) theta_s for the teacher backbone and head."""
        return [EmaPair(self.backbone, self.teacher_backbone), EmaPair(self.head, self.teacher_head)]

    def momentum(self, step: int, total_steps: int) -> float:
        """l, from ``momentum_base`` to 1 on a cosine schedule."""
        return cosine_momentum(self.params.momentum_base, step, total_steps)

    def update_state(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        """Eq. 4, centre c <- m c + (1 - m) mean of this step's teacher outputs (after the teacher's EMA)."""
        self.centre.lerp_(outputs.state["batch_centre"], 1.0 - self.params.center_momentum)

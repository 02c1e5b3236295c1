"""Supervised baseline: the backbone trained end-to-end with a linear classifier and cross-entropy
(the "Supervised" rows of the SSL papers' tables, e.g. He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, for the recipe).

One augmented view per image; samples labelled -1 (unlabelled) are ignored, and a batch with no
labelled sample contributes a zero loss. The train accuracy over the labelled samples is logged.

Ambiguities resolved:
- head: a single linear layer on the backbone features, as in the papers' supervised baselines;
  ``projector`` (e.g. "2048") puts an MLP between the backbone and the classifier.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.models.heads import HeadSpec, mlp, out_dim


class SupervisedParams(MethodParams):
    name: Literal["supervised"] = "supervised"
    projector: HeadSpec = Field("", description="MLP widths between backbone and classifier; empty: linear classifier")


@fp32_loss
def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled samples (label -1 is ignored); 0 when none is labelled."""
    labelled = (labels >= 0).sum().clamp(min=1)
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / labelled


class Supervised(Method):
    name: ClassVar[str] = "supervised"
    Params: ClassVar[type[MethodParams]] = SupervisedParams
    recipe: ClassVar[str] = "supervised"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.1,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }

    def __init__(
        self, backbone: nn.Module, params: SupervisedParams, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector)
        self.classifier = nn.Linear(out_dim(backbone.out_dim, params.projector), num_classes)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Cross-entropy of the first crop against ``views.labels``; also logs the train accuracy."""
        logits = self.classifier(self.projector(self.backbone(views.crops[0])))
        loss = supervised_loss(logits, views.labels)
        labelled = views.labels >= 0
        correct = (logits.detach().argmax(dim=1) == views.labels) & labelled
        accuracy = correct.sum() / labelled.sum().clamp(min=1)
        return StepOutput(loss, logs={"train_acc": accuracy})

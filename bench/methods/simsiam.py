"""SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.

Both views go through one shared encoder f (backbone plus projection MLP) giving z1, z2, and a
prediction MLP h gives p1, p2. Each prediction is pulled towards the other view's projection by the
negative cosine similarity D, and the projection side is a stop-gradient target; with the predictor
and the stop-gradient (no negatives, no momentum encoder) the network does not collapse. The
per-channel std of the normalised projections is logged as the paper's collapse monitor (it falls
to 0 under collapse, about 1/sqrt(d) when healthy).

Ambiguities resolved:
- projector output BN: the paper applies BN to every projector layer, output included, without
  saying whether the last one is affine; the official code drops its affine parameters:
  ``projector_last_bn_affine=True`` keeps them.
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
from bench.methods.branches import STOP_GRADIENT
from bench.models.heads import HeadSpec, mlp, out_dim
from bench.models.param_groups import DecayRules, ParamGroup, no_decay_names, split_groups


class SimSiamParams(MethodParams):
    name: Literal["simsiam"] = "simsiam"
    projector: HeadSpec = Field("2048-2048-2048", description="projection MLP widths (BN on every layer, output included)")
    projector_last_bn_affine: bool = Field(False, description="affine parameters on the projector's output BN")
    predictor: HeadSpec = Field(
        "512-2048", description="prediction MLP h widths (bottleneck); must end at the projector width"
    )
    fix_predictor_lr: bool = Field(False, description="the predictor keeps the peak lr, not decayed (Sec. 4.4; --fix-pred-lr)")


@fp32_loss
def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L = 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)) with D(p, z) = -cos(p, z), averaged over the batch."""
    d12 = -F.cosine_similarity(p1, z2.detach(), dim=1).mean()  # Eq. 3: D(p1, stopgrad(z2)), D of Eq. 1
    d21 = -F.cosine_similarity(p2, z1.detach(), dim=1).mean()  # Eq. 3, views swapped
    return 0.5 * d12 + 0.5 * d21  # Eq. 4


class SimSiam(Method):
    name: ClassVar[str] = "simsiam"
    Params: ClassVar[type[MethodParams]] = SimSiamParams
    recipe: ClassVar[str] = "simsiam_cifar"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.05,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }
    shared_weights_reason: ClassVar[str] = STOP_GRADIENT

    def __init__(
        self, backbone: nn.Module, params: SimSiamParams, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        projection_dim = out_dim(backbone.out_dim, params.projector)
        if out_dim(projection_dim, params.predictor) != projection_dim:
            raise ConfigError(
                f"simsiam: method.predictor '{params.predictor}' must end at the projector width {projection_dim} "
                f"(method.projector '{params.projector}'); e.g. predictor '512-{projection_dim}'"
            )
        self.projector = mlp(
            backbone.out_dim, params.projector, last_bn=True, last_bn_affine=params.projector_last_bn_affine
        )
        self.predictor = mlp(projection_dim, params.predictor)

    def param_groups(self, rules: DecayRules) -> list[ParamGroup]:
        """With ``fix_predictor_lr``: the predictor in groups of its own that keep the peak lr (Sec. 4.4)."""
        if not self.params.fix_predictor_lr:
            return super().param_groups(rules)
        no_decay = no_decay_names(self)
        rest = [(name, p) for name, p in self.named_parameters() if not name.startswith("predictor.")]
        return split_groups(rest, rules, no_decay) + split_groups(self.predictor.named_parameters("predictor"), rules, no_decay, fixed_lr=True)

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """SimSiam loss of the two crops; also logs the per-channel std of the normalised z."""
        z1, z2 = (self.projector(self.backbone(x)) for x in views.crops[:2])
        loss = simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2)
        z_std = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return StepOutput(loss, logs={"z_std": z_std})

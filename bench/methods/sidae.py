"""SidAE: Baier, Mair & Fadel, "Self-Supervised Siamese Autoencoders", IDA 2024 (arXiv 2304.02549),
and its two-view denoising-autoencoder baseline (DAE).

SidAE is SimSiam plus a decoder: each view's projection z_j is decoded back to the image, and the
reconstruction is scored by MSE against the original un-augmented image, the augmentations acting as
the denoising corruption. The losses mix convexly, L = w L_dae + (1 - w) L_simsiam, with
L_dae = 1/2 MSE(x, Dec(z_1)) + 1/2 MSE(x, Dec(z_2)); reconstruction gradients reach the projector
and the backbone (only the Siamese target is stop-gradient). w = 0 is SimSiam; w = 1 is the DAE
baseline, registered as ``dae``: the same encoder and decoder without a predictor (unused at w = 1).

The decoder maps z by one Linear layer to a 512 x 1 x 1 map, then five 3x3 transposed convolutions
(stride 2, padding 1, output padding 1) double it to 32 x 32 through 256, 128, 64 and 32 channels to
the image's channels, with BN + ReLU between the layers and no output activation.

Ambiguities resolved:
- reconstruction target: the clean image x of the loss equation (the engine passes it); the prose's
  reading, each view x_j itself: ``target="view"``.
- MSE: mean over pixels, in the normalised input space the network sees (no option).
- decoder: widths 512-256-128-64-32-C, BN + ReLU after the Linear layer and each hidden transposed
  convolution, no output activation (the paper gives only the layer types, no option); for images
  other than 32 x 32 the reconstruction is resized to the target's size by bilinear interpolation.
- projector: SimSiam's 2048-2048-2048 with BN on every layer, the last one without affine
  parameters (``projector_last_bn_affine=True`` keeps them); predictor 512-2048.
- learning rate: 0.03 at the paper's batch 512 is taken as an absolute rate, not scaled with the
  batch (``optimizer.lr_scaling=linear`` with ``reference_batch=512`` scales it).

Code reading: none (``reading: code`` changes nothing): the paper points to no official code; its equation and
its prose differ on the reconstruction target (``target`` above).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.simsiam import SimSiam, SimSiamParams, simsiam_loss
from bench.models.heads import HeadSpec, mlp, out_dim

#: decoder channels from the 1 x 1 map to the last hidden transposed convolution
DECODER_CHANNELS = (512, 256, 128, 64, 32)

ReconstructionTarget = Literal["clean", "view"]
_TARGET_DESCRIPTION = "what each view's reconstruction is compared with: the un-augmented image or the view itself"
_OPTIMIZER: dict[str, Any] = {
    "name": "sgd",
    "lr": 0.03,
    "lr_scaling": "none",
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "exclude_bias_bn": False,
}


class SidAEParams(SimSiamParams):
    name: Literal["sidae"] = "sidae"
    w: float = Field(0.5, ge=0, le=1, description="weight of the reconstruction loss; 1 - w weighs SimSiam's")
    target: ReconstructionTarget = Field("clean", description=_TARGET_DESCRIPTION)


class DAEParams(MethodParams):
    name: Literal["dae"] = "dae"
    projector: HeadSpec = Field("2048-2048-2048", description="projection MLP widths (BN on every layer, output included)")
    projector_last_bn_affine: bool = Field(False, description="affine parameters on the projector's output BN")
    target: ReconstructionTarget = Field("clean", description=_TARGET_DESCRIPTION)


class Decoder(nn.Module):
    """z (B, D) -> image (B, C, 32, 32): Linear to 512 x 1 x 1, then five stride-2 transposed convolutions."""

    def __init__(self, in_dim: int, channels: int):
        super().__init__()
        widths = (*DECODER_CHANNELS, channels)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, widths[0], bias=False), nn.BatchNorm1d(widths[0]), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            last = i == len(widths) - 2
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Reconstruct at 32 x 32, resized bilinearly to ``size`` (H, W) when that differs."""
        x = self.deconv(self.fc(z)[:, :, None, None])  # each layer doubles the side: 1 -> 32
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


@fp32_loss
def dae_loss(r1: torch.Tensor, r2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """L_dae = 1/2 MSE(x1, r1) + 1/2 MSE(x2, r2), mean over all pixels; x_j is view j's target."""
    return 0.5 * F.mse_loss(r1, x1) + 0.5 * F.mse_loss(r2, x2)  # Sec. 3: 1/2 D_mse(x, x'_1) + 1/2 D_mse(x, x'_2)


@fp32_loss
def sidae_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor,
    w: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return L = w L_dae + (1 - w) L_simsiam and the unweighted terms ``dae`` and ``simsiam``."""
    l_si = simsiam_loss(p1, p2, z1, z2)  # Sec. 3: L_si = 1/2 D_ncs(p1, sg(z2)) + 1/2 D_ncs(p2, sg(z1))
    l_dae = dae_loss(r1, r2, x1, x2)
    loss = w * l_dae + (1 - w) * l_si  # Sec. 3: L_sidae = w L_dae + (1 - w) L_si
    return loss, {"dae": l_dae.detach(), "simsiam": l_si.detach()}


def reconstructions(
    decoder: Decoder, z1: torch.Tensor, z2: torch.Tensor, views: Views, target: ReconstructionTarget
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode crops 1 and 2 from z1, z2; return (r1, r2, x1, x2) with x_j the target of r_j.

    The target is the clean image for both crops, or each crop itself; r_j has x_j's size.
    """
    if target == "view":
        x1, x2 = views.crops[0], views.crops[1]
    elif views.clean is None:
        raise ConfigError(
            "method.target 'clean' needs the un-augmented images, but the batch has no clean view; "
            "build the views with clean=True (the engine does so for methods with needs_clean_view)"
        )
    else:
        x1 = x2 = views.clean
    return decoder(z1, x1.shape[-2:]), decoder(z2, x2.shape[-2:]), x1, x2


class SidAE(SimSiam):
    name: ClassVar[str] = "sidae"
    Params: ClassVar[type[MethodParams]] = SidAEParams
    recipe: ClassVar[str] = "simsiam_cifar"
    needs_clean_view: ClassVar[bool] = True
    optimizer: ClassVar[dict[str, Any]] = dict(_OPTIMIZER)

    def __init__(
        self, backbone: nn.Module, params: SidAEParams, *, num_classes: int, image_shape: tuple[int, int, int]
    ):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.decoder = Decoder(out_dim(backbone.out_dim, params.projector), image_shape[0])

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """SidAE loss of the two crops; also logs its unweighted DAE and SimSiam terms."""
        z1, z2 = (self.projector(self.backbone(x)) for x in views.crops[:2])
        r1, r2, x1, x2 = reconstructions(self.decoder, z1, z2, views, self.params.target)
        loss, terms = sidae_loss(self.predictor(z1), self.predictor(z2), z1, z2, r1, r2, x1, x2, self.params.w)
        return StepOutput(loss, logs=terms)


class DAE(Method):
    name: ClassVar[str] = "dae"
    Params: ClassVar[type[MethodParams]] = DAEParams
    recipe: ClassVar[str] = "simsiam_cifar"
    needs_clean_view: ClassVar[bool] = True
    optimizer: ClassVar[dict[str, Any]] = dict(_OPTIMIZER)

    def __init__(self, backbone: nn.Module, params: DAEParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(
            backbone.out_dim, params.projector, last_bn=True, last_bn_affine=params.projector_last_bn_affine
        )
        self.decoder = Decoder(out_dim(backbone.out_dim, params.projector), image_shape[0])

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Two-view denoising loss: each crop's reconstruction against the target (SidAE at w = 1)."""
        z1, z2 = (self.projector(self.backbone(x)) for x in views.crops[:2])
        r1, r2, x1, x2 = reconstructions(self.decoder, z1, z2, views, self.params.target)
        return StepOutput(dae_loss(r1, r2, x1, x2))

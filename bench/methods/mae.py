"""MAE: He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.

The image is cut into non-overlapping patches; a random 75 % of them are removed per sample and the ViT encoder
sees only the visible ones (with their position embeddings and the class token). A light decoder receives the
encoded visible tokens and a shared learned mask token in every removed position, adds fixed 2-D sin-cos position
embeddings, and predicts the pixels of every patch; the loss is the mean squared error on the removed patches only
(Sec. 3), against each patch's pixels standardised by its own mean and variance (the normalised-pixel target,
Table 1d). The encoder (the run's ViT backbone) is what the evaluations use: the class token after the final norm.

Optimizer (Table 8): AdamW, base lr 1.5e-4 x batch / 256, betas (0.9, 0.95), weight decay 0.05 on every
parameter but biases and norms (the class and mask tokens are decayed, as in the code), 40 warm-up epochs then
cosine; views: random resized crop (0.2, 1) and flip only.

Evaluation (for the protocols): the linear probe puts BatchNorm1d(affine=False) before the linear layer (App. A.1),
which the feature standardisation of the probe reproduces on fixed features; fine-tuning uses layer-wise lr decay
(``eval.finetune.layer_decay``: 0.75 in the paper, 0.65 in the repository for ViT-B) with AdamW.

Ambiguities resolved:
- target: normalised pixels (``norm_pix_loss=true``), the setting of the released models and Table 3; the code's
  default is raw pixels: ``norm_pix_loss=false``.
- decoder: 512-d, 8 blocks, 16 heads (the paper's); for 32 px images solo-learn keeps it, the CPU test-bed
  (``docs/vit.md`` §5) uses a 64-d, 2-block decoder.
- masking noise: drawn from a generator seeded by the run and the step for the whole global batch (every rank takes
  its share), not the global RNG, so a distributed step masks exactly as one process does.
- encoder initialisation: the backbone's (timm's, or MoCo v3's); the MAE code applies xavier-uniform to every Linear.
- position embeddings: the backbone's (``backbone.pos_embed=sincos`` is the paper's fixed sin-cos; learned works).
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.models.vit import ViTBackbone, sincos_2d
from bench.core.collectives import rank, world_size


class MAEParams(MethodParams):
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of the patches removed per sample")
    decoder_dim: int = Field(512, ge=4, description="decoder token width (a multiple of 4 and of decoder_heads)")
    decoder_depth: int = Field(8, ge=1, description="decoder transformer blocks")
    decoder_heads: int = Field(16, ge=1, description="decoder attention heads")
    norm_pix_loss: bool = Field(True, description="target: each patch standardised by its own mean and variance")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p p C): row-major patches, each ordered by row, column, then channel (fastest)."""
    n, c, h, w = images.shape
    grid = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking from uniform ``noise`` (N, L): the floor(L (1 - r)) lowest-noise patches stay.

    Returns ``keep`` (N, len_keep) indices of the visible patches, ``mask`` (N, L) with 1 for a removed patch and 0
    for a visible one in the original order, and ``restore`` (N, L) that puts the shuffled order back.
    """
    length = noise.shape[1]
    len_keep = int(length * (1 - mask_ratio))
    shuffle = torch.argsort(noise, dim=1)  # ascending: the first len_keep are kept
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    return shuffle[:, :len_keep], torch.gather(mask, 1, restore), restore


@fp32_loss
def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean over removed patches of the per-patch MSE between ``pred`` and the (normalised) ``target`` patches."""
    if norm_pix:  # Sec. 3: each patch standardised by its own mean and (unbiased) variance
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # MSE in pixel space, per patch
    return (per_patch * mask).sum() / mask.sum()  # Sec. 3: "we compute the loss only on masked patches"


def _xavier_linear(m: nn.Module) -> None:
    """The MAE decoder's init: xavier-uniform Linear weights, zero biases (LayerNorms keep 1 and 0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MAE(Method):
    name: ClassVar[str] = "mae"
    Params: ClassVar[type[MethodParams]] = MAEParams
    recipe: ClassVar[str] = "mae"
    optimizer: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 1.5e-4,
        "lr_scaling": "linear",
        "weight_decay": 0.05,
        "betas": (0.9, 0.95),
        "exclude_bias_bn": True,
        "exclude_tokens": False,
    }
    schedule: ClassVar[dict[str, Any]] = {"warmup_epochs": 40}
    needs_vit: ClassVar[bool] = True

    def __init__(self, backbone: nn.Module, params: MAEParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError("mae: the encoder must be a ViT; set backbone.name to vit_tiny, vit_small, vit_base or vit "
                              "(with backbone.patch_size, e.g. 4 for 32 px images)")
        if params.decoder_dim % params.decoder_heads or params.decoder_dim % 4:
            raise ConfigError(f"mae: method.decoder_dim {params.decoder_dim} must be a multiple of 4 and of "
                              f"method.decoder_heads {params.decoder_heads}")
        dim, patch, grid = backbone.out_dim, backbone.patch_size, backbone.net.patch_embed.grid_size[0]
        self.decoder_embed = nn.Linear(dim, params.decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, params.decoder_dim) * 0.02)
        self.register_buffer("decoder_pos_embed", sincos_2d(params.decoder_dim, grid), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(*[Block(params.decoder_dim, params.decoder_heads, mlp_ratio=4.0, qkv_bias=True,
                                                    norm_layer=norm) for _ in range(params.decoder_depth)])
        self.decoder_norm = norm(params.decoder_dim)
        self.decoder_pred = nn.Linear(params.decoder_dim, patch * patch * image_shape[0])
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            m.apply(_xavier_linear)
        # the run's masking stream (seeded with the run); drawn on the CPU generator, so it exists on the meta device too
        self.mask_seed = int(torch.randint(2**31 - 1, (), device="cpu"))

    def get_extra_state(self) -> dict[str, int]:
        return {"mask_seed": self.mask_seed}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.mask_seed = state["mask_seed"]

    def _noise(self, batch: int, length: int, step: int, device: torch.device) -> torch.Tensor:
        """This rank's rows of the step's (global batch, L) uniform noise."""
        generator = torch.Generator(device=device).manual_seed(self.mask_seed * 1_000_003 + step)
        noise = torch.rand(batch * world_size(), length, generator=generator, device=device)
        return noise[rank() * batch:(rank() + 1) * batch]

    def encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder on the class token and the visible patches ``keep``: (N, 1 + len_keep, D) after the final norm."""
        net = self.backbone.net
        tokens = net._pos_embed(net.patch_embed(images))  # [CLS + pos_0, patch_i + pos_i]
        visible = torch.gather(tokens[:, 1:], 1, keep[..., None].expand(-1, -1, tokens.shape[2]))
        x = net.norm_pre(torch.cat([tokens[:, :1], visible], dim=1))
        return net.norm(net.blocks(x))

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Decoder: mask tokens in the removed positions, original order, sin-cos positions; (N, L, p p C)."""
        x = self.decoder_embed(latent)
        n, length = restore.shape
        shuffled = torch.cat([x[:, 1:], self.mask_token.expand(n, length + 1 - x.shape[1], -1)], dim=1)
        patches = torch.gather(shuffled, 1, restore[..., None].expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """Reconstruction loss of the removed patches of the first view; also logs the fraction removed."""
        images = views.crops[0]
        target = patchify(images, self.backbone.patch_size)
        keep, mask, restore = random_masking(self._noise(*target.shape[:2], step, images.device), self.params.mask_ratio)
        pred = self.decode(self.encode_visible(images, keep), restore)
        loss = mae_loss(pred, target, mask, self.params.norm_pix_loss)
        return StepOutput(loss, logs={"masked": mask.mean().detach()})

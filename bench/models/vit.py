"""Vision Transformers from timm (random init), with the options the SSL papers use.

- size: ``vit_tiny`` (192-d, 12 blocks, 3 heads), ``vit_small`` (384, 12, 6; MoCo v3 uses 12 heads), ``vit_base``
  (768, 12, 12), or ``vit`` with ``embed_dim``/``depth``/``num_heads``; any patch size and image size (CIFAR 32 px
  with patch 4, STL-10 96 px with patch 8, ImageNet 224 px with patch 16).
- position embedding: learned (timm, DINO) or fixed 2-D sin-cos (MoCo v3, MAE), with a zero class-token slot.
- ``freeze_patch_embed``: MoCo v3's random patch projection (the patch embedding is never trained).
- ``weight_init=moco``: timm's MoCo v3 init (xavier-uniform Linear layers, qkv split in three, class token std
  1e-6) plus MoCo v3's xavier-uniform patch embedding.
- the training feature: the class token after the final LayerNorm (MoCo v3, DINO, MAE's linear probe) or the mean
  of the patch tokens followed by a LayerNorm (``pool=avg``, MAE's fine-tuning).
- evaluation features (``eval_features``): ``cls``, ``avg`` (mean of the final-norm patch tokens), DINO's
  ``last4_cls`` (the class tokens of the last 4 blocks, each after the final norm, concatenated: DINO's ViT-S
  linear probe) and ``cls+avg`` (DINO's ViT-B probe).

Every view size must be a multiple of the patch size (checked when the run config is validated); views of another
size than ``image_size`` (multi-crop) get the position embedding resampled (timm's ``dynamic_img_size``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

if TYPE_CHECKING:
    from bench.models.backbones import BackboneConfig

#: name -> (embed_dim, depth, num_heads)
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
#: what ``eval_features`` concatenates: (blocks whose class token is taken, whether the patch-token mean is added)
EVAL_FEATURES = {"cls": (1, False), "avg": (0, True), "last4_cls": (4, False), "cls+avg": (1, True)}


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(N, dim): [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim / 2)), k < dim / 2 (Vaswani et al.)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.einsum("n,d->nd", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """(1, grid^2 [+1], dim) fixed 2-D sin-cos position embedding of a row-major ``grid`` x ``grid`` patch grid.

    The first half of the channels encodes the patch's column, the second half its row (MAE's
    ``get_2d_sincos_pos_embed``; MoCo v3's differs by that channel permutation); the class-token slot is zeros.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs an embed_dim divisible by 4 (got {dim})")
    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))
    table = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table])
    return torch.from_numpy(table).float()[None]


class ViTBackbone(nn.Module):
    """A timm VisionTransformer without head: (B, C, H, W) -> the pooled (B, embed_dim) feature."""

    def __init__(self, cfg: BackboneConfig, in_channels: int):
        super().__init__()
        self.net = VisionTransformer(
            img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=in_channels, num_classes=0,
            global_pool="token" if cfg.pool == "cls" else "avg", embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate, dynamic_img_size=True,
            weight_init="moco" if cfg.weight_init == "moco" else "",
        )
        net = self.net
        if cfg.weight_init == "moco":  # MoCo v3 vits.py: xavier-uniform patch projection, seen as (D, C p p)
            nn.init.xavier_uniform_(net.patch_embed.proj.weight.view(cfg.embed_dim, -1))
            nn.init.zeros_(net.patch_embed.proj.bias)
        if cfg.pos_embed == "sincos":
            net.pos_embed.data.copy_(sincos_2d(cfg.embed_dim, cfg.image_size // cfg.patch_size))
            net.pos_embed.requires_grad_(False)
        if cfg.freeze_patch_embed:
            net.patch_embed.requires_grad_(False)
        self.out_dim = cfg.embed_dim
        self.depth = cfg.depth
        self.patch_size = cfg.patch_size
        self.pool = cfg.pool
        self.eval_mode = cfg.eval_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def evaluation_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature the evaluations use (``eval_features``), e.g. (B, 4 D) for ``last4_cls``."""
        if self.eval_mode == self.pool:
            return self.net(x)
        blocks, avg = EVAL_FEATURES[self.eval_mode]
        tokens = self.net.forward_intermediates(x, indices=max(blocks, 1), norm=True, return_prefix_tokens=True,
                                                output_fmt="NLC", intermediates_only=True)
        parts = [prefix[:, 0] for _, prefix in tokens[len(tokens) - blocks:]]
        if avg:
            parts.append(tokens[-1][0].mean(dim=1))
        return torch.cat(parts, dim=1)

    def no_weight_decay_names(self) -> set[str]:
        """Parameters fine-tuning (and ``optimizer.exclude_tokens``) keeps out of weight decay: the tokens."""
        return {f"net.{name}" for name in self.net.no_weight_decay()}

    def layer_id(self, name: str) -> int:
        """BEiT / MAE layer index of a parameter: 0 for the embeddings, i + 1 for block i, depth + 1 after."""
        parts = name.removeprefix("net.").split(".")
        if parts[0] in ("cls_token", "pos_embed", "patch_embed", "reg_token"):
            return 0
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        return self.depth + 1

    def layer_decay_scales(self, decay: float) -> dict[str, float]:
        """Layer-wise lr decay (MAE ``lr_decay.py``): parameter name -> decay ** (depth + 1 - layer_id)."""
        return {name: decay ** (self.depth + 1 - self.layer_id(name)) for name, _ in self.named_parameters()}

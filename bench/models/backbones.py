"""Backbones: torchvision ResNets (random init, optional CIFAR stem), a small CNN, and timm ViTs and ConvNeXts.

Every backbone maps (B, C, H, W) to pooled features (B, out_dim) and exposes ``out_dim``. A backbone may also
define ``evaluation_features(x)`` (the feature the evaluations use when it differs from the training one, e.g.
DINO's concatenated last-4 class tokens) and ``no_weight_decay_names()`` (tokens kept out of weight decay).
timm networks are built with random weights only (nothing is downloaded); ``checkpoint`` loads a local timm
checkpoint file into them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import timm
import torch
from pydantic import Field, model_validator
from timm.models import load_state_dict
from timm.models.convnext import checkpoint_filter_fn as convnext_filter
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter
from torch import nn
from torchvision import models

from bench.errors import ConfigError
from bench.models.vit import EVAL_FEATURES, VIT_SIZES, ViTBackbone
from bench.schema import ConfigModel, PathField

RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")
VIT_NAMES = (*VIT_SIZES, "vit")
CONVNEXT_NAMES = ("convnext_atto", "convnext_tiny", "convnext_small", "convnext_base")
#: ViT-only keys (null for other backbones; filled with their defaults for a ViT)
VIT_FIELDS = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "pos_embed", "freeze_patch_embed",
              "pool", "eval_features", "weight_init")
#: keys of every timm backbone (ViT and ConvNeXt)
TIMM_FIELDS = ("drop_path_rate", "checkpoint")

#: every backbone name with a one-line description (``ssl-bench list``); ``BackboneName`` and ``build_backbone`` read
#: the families above, so a new backbone is a name here and its family's builder
BACKBONES: dict[str, str] = {
    **{name: "torchvision ResNet (random init; cifar_stem for 32 px images)" for name in RESNET_NAMES},
    "small_cnn": "four conv-BN-ReLU blocks (width) for tiny images",
    **{name: f"timm ViT: {d}-d, {depth} blocks, {heads} heads; patch_size, pos_embed, pool, eval_features, ..."
       for name, (d, depth, heads) in VIT_SIZES.items()},
    "vit": "timm ViT of any embed_dim, depth and num_heads",
    **{name: "timm ConvNeXt (random init; drop_path_rate)" for name in CONVNEXT_NAMES},
}
BackboneName = Literal[tuple(BACKBONES)]


class BackboneConfig(ConfigModel):
    name: BackboneName = "small_cnn"
    cifar_stem: bool = Field(False, description="3x3 stride-1 conv1 and no max-pool (CIFAR-size images)")
    zero_init_residual: bool = Field(True, description="zero-init the last BN of each residual block")
    width: int = Field(32, ge=4, description="small_cnn: channels of the first block (doubled per block)")
    image_size: int | None = Field(None, ge=1, description="ViT: side the position embedding is built for "
                                   "(null: the first view's crop size, filled in when the run config is resolved)")
    patch_size: int | None = Field(None, ge=1, description="ViT: patch side (default 16); every view size must be a multiple")
    embed_dim: int | None = Field(None, ge=1, description="ViT: token width (default: the named size's; required for vit)")
    depth: int | None = Field(None, ge=1, description="ViT: transformer blocks (default: the named size's)")
    num_heads: int | None = Field(None, ge=1, description="ViT: attention heads (default: the named size's; MoCo v3's ViT-S: 12)")
    mlp_ratio: float | None = Field(None, gt=0, description="ViT: MLP hidden width / embed_dim (default 4)")
    pos_embed: Literal["learned", "sincos"] | None = Field(None, description="ViT: learned (default) or fixed 2-D sin-cos")
    freeze_patch_embed: bool | None = Field(None, description="ViT: MoCo v3's random (frozen) patch projection (default false)")
    pool: Literal["cls", "avg"] | None = Field(None, description="ViT: training feature, the class token after the final "
                                                "norm (default) or the mean of the patch tokens, then a LayerNorm")
    eval_features: Literal["cls", "avg", "last4_cls", "cls+avg"] | None = Field(
        None, description="ViT: feature of the evaluations (default: the pool's); last4_cls: DINO's ViT-S linear probe")
    weight_init: Literal["timm", "moco"] | None = Field(None, description="ViT: timm's init (default) or MoCo v3's")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="timm backbones: stochastic depth rate (default 0)")
    checkpoint: PathField | None = Field(None, description="timm backbones: a local timm checkpoint file to load (no download)")

    @model_validator(mode="after")
    def _family_keys(self) -> BackboneConfig:
        vit, timm_net = self.name in VIT_NAMES, self.name in VIT_NAMES + CONVNEXT_NAMES
        misplaced = [k for k in VIT_FIELDS if not vit and getattr(self, k) is not None]
        misplaced += [k for k in TIMM_FIELDS if not timm_net and getattr(self, k) is not None]
        if misplaced:
            kind = "ViT" if set(misplaced) <= set(VIT_FIELDS) else "timm (ViT, ConvNeXt)"
            raise ValueError(f"{', '.join(misplaced)}: only for {kind} backbones, not {self.name}; drop the key(s)")
        if timm_net and self.drop_path_rate is None:
            self.drop_path_rate = 0.0
        if vit:
            self._vit_defaults()
        return self

    def _vit_defaults(self) -> None:
        if self.name == "vit" and None in (self.embed_dim, self.depth, self.num_heads):
            raise ValueError("backbone vit needs embed_dim, depth and num_heads (e.g. 64, 4, 4), or use vit_tiny/vit_small/vit_base")
        dim, depth, heads = VIT_SIZES.get(self.name, (self.embed_dim, self.depth, self.num_heads))
        self.embed_dim, self.depth, self.num_heads = self.embed_dim or dim, self.depth or depth, self.num_heads or heads
        self.patch_size, self.mlp_ratio = self.patch_size or 16, self.mlp_ratio or 4.0
        self.pos_embed, self.pool, self.weight_init = self.pos_embed or "learned", self.pool or "cls", self.weight_init or "timm"
        self.freeze_patch_embed = bool(self.freeze_patch_embed)
        self.eval_features = self.eval_features or self.pool
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            raise ValueError(f"pos_embed sincos needs embed_dim divisible by 4 (got {self.embed_dim})")
        if self.pool == "avg" and self.eval_features != "avg":
            raise ValueError("eval_features picks final-norm tokens, but with pool avg the norm follows the pooling; "
                             "drop eval_features or use pool cls")

    @property
    def is_vit(self) -> bool:
        return self.name in VIT_NAMES

    def check_sizes(self, sizes: list[int], where: str) -> None:
        """Raise ConfigError unless every image side in ``sizes`` (views and evaluation images) is a patch multiple."""
        if not self.is_vit:
            return
        bad = sorted({s for s in sizes if s % self.patch_size})
        if bad:
            raise ConfigError(
                f"{where}: image sides {bad} px are not multiples of backbone.patch_size={self.patch_size} (all sides: "
                f"{sorted(set(sizes))}); give each view a size that is a multiple (e.g. augment[i].size_fraction=0.5 for "
                f"16 px local crops of 32 px images, augment[i].size=96 of 224 px ones) or change backbone.patch_size"
            )

    def eval_dim(self) -> int | None:
        """Width of the evaluation feature of a ViT (e.g. 4 x embed_dim for last4_cls)."""
        if not self.is_vit:
            return None
        blocks, avg = EVAL_FEATURES[self.eval_features]
        return self.embed_dim * (blocks + avg)


class ResNetBackbone(nn.Module):
    def __init__(self, name: str, in_channels: int, cifar_stem: bool, zero_init_residual: bool):
        super().__init__()
        net = getattr(models, name)(weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A VGG-style net for tiny images: four conv-BN-ReLU blocks, max-pooling between them."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(chans) - 1:
                layers.append(nn.MaxPool2d(2))
            prev = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNeXtBackbone(nn.Module):
    """A timm ConvNeXt without classifier: global average pool and its LayerNorm, (B, num_features)."""

    def __init__(self, cfg: BackboneConfig, in_channels: int):
        super().__init__()
        self.net = timm.create_model(cfg.name, pretrained=False, num_classes=0, in_chans=in_channels,
                                     drop_path_rate=cfg.drop_path_rate)
        self.out_dim = self.net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_timm_checkpoint(backbone: ViTBackbone | ConvNeXtBackbone, path: Path) -> None:
    """Load a local timm checkpoint into ``backbone.net``: its classifier is dropped, a ViT's position embedding
    resampled to the backbone's grid; any other missing or unexpected key is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"no file {path}; give the path of a local timm checkpoint (.pth/.safetensors) as backbone.checkpoint")
    state = load_state_dict(str(path))
    state = (vit_filter if isinstance(backbone, ViTBackbone) else convnext_filter)(state, backbone.net)
    state = {k: v for k, v in state.items() if not k.startswith("head.fc.") and not (k.startswith("head.") and k.count(".") == 1)}
    missing, unexpected = backbone.net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit the backbone (backbone.checkpoint): missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}; check backbone.name, patch_size, embed_dim and depth")


def build_backbone(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    if cfg.name == "small_cnn":
        return SmallCNN(in_channels, cfg.width)
    if cfg.name in RESNET_NAMES:
        return ResNetBackbone(cfg.name, in_channels, cfg.cifar_stem, cfg.zero_init_residual)
    if cfg.is_vit and cfg.image_size is None:
        raise ConfigError("backbone.image_size: unset; resolve the run config (it is the first view's crop size) or set it")
    net = ViTBackbone(cfg, in_channels) if cfg.is_vit else ConvNeXtBackbone(cfg, in_channels)
    if cfg.checkpoint is not None:
        load_timm_checkpoint(net, cfg.checkpoint)
    return net

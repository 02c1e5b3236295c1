"""Backbones: torchvision ResNets (random init, optional CIFAR stem) and a small CNN.

Every backbone maps (B, C, H, W) to pooled features (B, out_dim) and exposes ``out_dim``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torchvision import models

from bench.schema import ConfigModel


class BackboneConfig(ConfigModel):
    name: Literal["resnet18", "resnet34", "resnet50", "small_cnn"] = "small_cnn"
    cifar_stem: bool = Field(False, description="3x3 stride-1 conv1 and no max-pool (CIFAR-size images)")
    zero_init_residual: bool = Field(True, description="zero-init the last BN of each residual block")
    width: int = Field(32, ge=4, description="small_cnn: channels of the first block (doubled per block)")


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


def build_backbone(cfg: BackboneConfig, in_channels: int) -> nn.Module:
    if cfg.name == "small_cnn":
        return SmallCNN(in_channels, cfg.width)
    return ResNetBackbone(cfg.name, in_channels, cfg.cifar_stem, cfg.zero_init_residual)

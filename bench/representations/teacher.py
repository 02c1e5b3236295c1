"""``teacher``: the frozen embedding of the clean image by a pre-trained network (MV-MR's KD setting).

Three sources: ``checkpoint`` (a model.pt written by the engine: the run's backbone is rebuilt from
its config and its "backbone" weights loaded), ``torchvision`` (an architecture name plus a local
state_dict file; the final classifier layer is replaced by the identity) and ``open_clip`` (the
paper's OpenCLIP ViT-B-16 laion400m_e32, when the ``open_clip_torch`` package is installed).
As in the official code the teacher sees the dataset-normalised image (not CLIP's statistics),
resized bilinearly to its input size; grey images are repeated to 3 channels for the torchvision and
OpenCLIP sources.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from pydantic import Field, model_validator
from torch import nn

from bench.errors import ConfigError
from bench.models.backbones import BackboneConfig, build_backbone
from bench.representations.features import RepParams
from bench.schema import PathField

_CLASSIFIERS = ("fc", "heads", "head", "classifier")


class TeacherParams(RepParams):
    source: Literal["checkpoint", "torchvision", "open_clip"] = Field(description="where the teacher comes from")
    path: PathField | None = Field(None, description="checkpoint: a run's model.pt; torchvision: a state_dict file")
    arch: str = Field("ViT-B-16", description="torchvision: e.g. 'resnet50'; open_clip: the model name")
    pretrained: str = Field("laion400m_e32", description="open_clip: the pretrained tag or a local weights file")
    input_size: int | None = Field(None, ge=8, description="resize side; None: 224 (torchvision, open_clip) or the image's own (checkpoint)")

    @model_validator(mode="after")
    def _needs_path(self) -> TeacherParams:
        if self.source != "open_clip" and self.path is None:
            raise ValueError(f"teacher.source={self.source} needs teacher.path (a model.pt or a state_dict file)")
        return self

    def identity(self) -> dict[str, Any]:
        """The params plus the sha1 of the weights file, so new weights under the same path make a new cache."""
        fields = self.model_dump(mode="json")
        if self.path is not None:
            fields["sha1"] = _file_sha1(self.weights_file())
        return fields

    def weights_file(self) -> Path:
        """The checkpoint or state_dict file, which must exist."""
        if self.path is None or not self.path.is_file():
            raise ConfigError(f"teacher.path: {self.path} does not exist; give a run's model.pt or a torchvision state_dict file")
        return self.path


def _file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_teacher(params: TeacherParams, channels: int) -> nn.Module:
    saved = torch.load(params.weights_file(), map_location="cpu", weights_only=True)
    if "backbone" not in saved or "config" not in saved:
        raise ConfigError(f"teacher.path: {params.path} is not a model.pt written by ssl-bench (no 'backbone'/'config')")
    backbone = build_backbone(BackboneConfig.model_validate(saved["config"]["backbone"]), channels)
    backbone.load_state_dict(saved["backbone"])
    return backbone


def _torchvision_teacher(params: TeacherParams) -> nn.Module:
    if not hasattr(torchvision.models, params.arch):
        raise ConfigError(f"teacher.arch: torchvision has no model '{params.arch}'; use one of torchvision.models.list_models()")
    model = getattr(torchvision.models, params.arch)(weights=None)
    model.load_state_dict(torch.load(params.weights_file(), map_location="cpu", weights_only=True))
    name = next((n for n in _CLASSIFIERS if hasattr(model, n)), None)
    if name is None:
        raise ConfigError(f"teacher.arch: cannot find the classifier of '{params.arch}' (looked for {', '.join(_CLASSIFIERS)})")
    setattr(model, name, nn.Identity())
    return model


class _OpenClipImageEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def _open_clip_teacher(params: TeacherParams) -> nn.Module:
    try:
        import open_clip
    except ImportError:
        raise ConfigError("teacher.source=open_clip needs the OpenCLIP package: pip install open_clip_torch") from None
    model, _, _ = open_clip.create_model_and_transforms(params.arch, pretrained=params.pretrained)
    return _OpenClipImageEncoder(model)


@functools.lru_cache(maxsize=2)
def _teacher(params: TeacherParams, channels: int, device: torch.device) -> nn.Module:
    if params.source == "checkpoint":
        model = _checkpoint_teacher(params, channels)
    elif params.source == "torchvision":
        model = _torchvision_teacher(params)
    else:
        model = _open_clip_teacher(params)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def teacher(x: torch.Tensor, params: TeacherParams) -> torch.Tensor:
    """The frozen teacher's embedding of the (resized) normalised image, flattened."""
    model = _teacher(params, x.shape[1], x.device)
    size = params.input_size or (x.shape[-1] if params.source == "checkpoint" else 224)
    x = x.float()
    if params.source != "checkpoint" and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return model(x).flatten(1).float()

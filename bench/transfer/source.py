"""The pre-trained backbone a detector starts from: an ssl-bench ``model.pt``, checked before any training."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from bench.errors import ConfigError
from bench.models.backbones import BackboneConfig


def read_pretrained(source: Path, archs: tuple[str, ...], needs: str) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone state_dict and architecture of ``source``; ConfigError unless it is one of ``archs``.

    ``needs`` names the consumer in the messages (e.g. "the detector's FPN", "detectron2's R50 protocols").
    """
    if not source.is_file():
        raise ConfigError(f"{source} does not exist: pass the model.pt that `ssl-bench train` writes in a run directory")
    not_ours = (f"{source} is not an ssl-bench model.pt (expected a torch file holding 'backbone' and 'config', "
                "written at the end of `ssl-bench train`): pass the model.pt of a finished run")
    try:
        saved = torch.load(source, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(not_ours) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("backbone"), dict) or not isinstance(saved.get("config"), dict):
        raise ConfigError(not_ours)
    try:
        backbone = BackboneConfig.model_validate(saved["config"].get("backbone"))
    except ValidationError:
        raise ConfigError(not_ours) from None
    if backbone.name not in archs:
        raise ConfigError(f"{source} holds a {backbone.name} backbone, but {needs} need a torchvision ResNet "
                          f"({', '.join(archs)}): pre-train with backbone.name={archs[-1]}")
    if backbone.cifar_stem:
        raise ConfigError(f"{source} was pre-trained with backbone.cifar_stem=true (3x3 stride-1 conv1, no max-pool), but "
                          f"{needs} need the standard 7x7 stride-2 stem with max-pool: pre-train with backbone.cifar_stem=false")
    return saved["backbone"], backbone.name

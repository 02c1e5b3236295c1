"""The device a run asks for (``train.device``)."""

from __future__ import annotations

import torch

from bench.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when visible, else the CPU; ``cuda`` refused with the fix when no CUDA device is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)

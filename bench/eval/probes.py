"""The probe protocols a suite lists in ``eval.probes``, by name, and what each one's selection reads.

- ``logreg``: L-BFGS logistic regression on cached features, C on validation, refit on train + val (DINOv2);
- ``linear``: a grid of SGD heads on cached features, lr (and wd) on validation, refit on train + val by default;
- ``linear_aug``: a grid of heads on augmented views through the frozen backbone, lr on validation (solo-learn,
  lightly, MoCo v3, MAE presets).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Callable, Union

import torch
from pydantic import Field
from torch import nn

from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.errors import ConfigError
from bench.eval.features import Choice, Features
from bench.eval.linear import LinearConfig, select_linear
from bench.eval.linear_aug import LinearAugConfig, select_linear_aug
from bench.eval.logreg import LogRegConfig, select_logreg


@dataclass(frozen=True)
class ProbeInputs:
    """What selections read: the train and validation features, and (for ``linear_aug``) the labelled train
    images in the order of the train features, with the frozen backbone (None on features alone). Never the test split."""

    train: Features
    val: Features
    num_classes: int
    images: ImageSet | FolderSet | None
    backbone: nn.Module | None
    device: torch.device

    def subset(self, index: torch.Tensor) -> ProbeInputs:
        """The inputs of a label fraction: the train samples ``index`` only, the same validation split."""
        images = self.images.subset(index.cpu()) if self.images is not None else None
        return replace(self, train=self.train.subset(index), images=images)


def select_probe(cfg: ProbeConfig, data: ProbeInputs, refit_on: Features | None) -> Choice:
    """The probe's choice on ``data.val``, its classifier refitted on ``refit_on`` where the probe refits
    (``logreg`` always, ``linear`` with ``refit``; None: the classifier fitted on ``data.train``)."""
    return PROBES[type(cfg)](cfg, data, refit_on)


def _logreg(cfg: LogRegConfig, data: ProbeInputs, refit_on: Features | None) -> Choice:
    return select_logreg(data.train, data.val, data.num_classes, cfg, refit_on)


def _linear(cfg: LinearConfig, data: ProbeInputs, refit_on: Features | None) -> Choice:
    return select_linear(data.train, data.val, data.num_classes, cfg, refit_on if cfg.refit else None)


def _linear_aug(cfg: LinearAugConfig, data: ProbeInputs, refit_on: Features | None) -> Choice:
    if data.images is None or data.backbone is None:
        raise ConfigError("eval.probes: linear_aug trains on images through the backbone; it has none here (cached features only)")
    return select_linear_aug(data.backbone, data.images, data.val, data.num_classes, cfg, data.device)


#: every probe protocol: its config type (whose ``name`` literal names it in ``eval.probes``) -> its selection
PROBES: dict[type, Callable[[Any, ProbeInputs, Features | None], Choice]] = {
    LogRegConfig: _logreg,
    LinearConfig: _linear,
    LinearAugConfig: _linear_aug,
}
PROBE_NAMES = tuple(cls.model_fields["name"].default for cls in PROBES)
ProbeConfig = Annotated[Union[tuple(PROBES)], Field(discriminator="name")]

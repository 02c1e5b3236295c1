"""The preflight of a suite: what would fail a cell on a worker, found before anything is written.

Each distinct method and backbone of the suite (with a second branch's backbone where ``method.branches`` differ) is
built once, on the ``meta`` device (no memory, no compute), for the image shape of its dataset; each on-disk dataset
(the pre-training set and every ``eval.datasets`` entry) and the detection stage's COCO set is checked for the files
its loader needs, none of them read. ``validate``, ``run``, ``search`` and ``worker`` pass ``suite_checks()`` to the
suite's validation, which reports every problem by the suite key that caused it.
"""

from __future__ import annotations

import re

import torch
from pydantic import BaseModel

from bench.config.run import RunConfig
from bench.suite.suite import Checks
from bench.data.registry import DatasetConfig, check_dataset, image_shape
from bench.errors import UserError
from bench.methods import MethodParams, method_class
from bench.models.backbones import BackboneConfig, build_backbone
from bench.transfer.coco import CocoConfig, check_coco
from bench.transfer.stage import DetectionStage

#: the class count the models are built for: it sizes only a classifier's output, which builds for any count
CLASSES = 10

Shape = tuple[int, int, int]


def suite_checks() -> Checks:
    """The checks of one suite validation; a model or a dataset that several cells share is checked once."""
    cells = _CellChecks()
    return Checks(cell=cells.problems, detection=_detection_problems)


class _CellChecks:
    """Problems of resolved cells, led by run-config key paths; models cached by (method, backbone, image shape)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str, Shape], list[str]] = {}
        self.datasets: dict[str, str | None] = {}

    def problems(self, config: RunConfig) -> list[str]:
        lines = self._dataset("dataset", config.dataset)
        shape = image_shape(config.dataset)
        for i, extra in enumerate(config.eval.datasets):
            lines += self._dataset(f"eval.datasets.{i}", extra)
            if image_shape(extra)[0] != shape[0]:
                lines.append(f"eval.datasets.{i}.name: {extra.name} has {image_shape(extra)[0]}-channel images but the "
                             f"backbone is pre-trained on {shape[0]}-channel {config.dataset.name} images; evaluate on a "
                             f"set with {shape[0]} channel(s)")
        return lines + self._models(config.method, config.backbone, shape)

    def _dataset(self, key: str, dataset: DatasetConfig) -> list[str]:
        identity = dataset.model_dump_json()
        if identity not in self.datasets:
            try:
                check_dataset(dataset)
                self.datasets[identity] = None
            except UserError as err:
                self.datasets[identity] = str(err)
        message = self.datasets[identity]
        return [] if message is None else [_line(key, message, "dataset", DatasetConfig, "root")]

    def _models(self, method: MethodParams, backbone: BackboneConfig, shape: Shape) -> list[str]:
        identity = (method.model_dump_json(), backbone.model_dump_json(), shape)
        if identity not in self.models:
            self.models[identity] = _build_problems(method, backbone, shape)
        return self.models[identity]


def _build_problems(method: MethodParams, backbone: BackboneConfig, shape: Shape) -> list[str]:
    """Build the backbone (and a differing second branch's, ``method.branches``) and the method around them on the
    meta device, timm's ViTs and ConvNeXts too; what any of them refuses, as a problem line."""
    second = method.second_backbone(backbone)
    with torch.device("meta"):
        try:
            net = build_backbone(backbone, shape[0])
        except UserError as err:
            return [_line("backbone", str(err), "backbone", BackboneConfig)]
        try:
            extra = {} if second is None else {"backbone_b": build_backbone(second, shape[0])}
        except UserError as err:
            return [f"method.branches.second: {err}"]
        try:
            method_class(method.name)(net, method, num_classes=CLASSES, image_shape=shape, **extra)
        except UserError as err:
            return [_line("method", str(err), "method", type(method))]
    return []


def _detection_problems(stage: DetectionStage) -> list[str]:
    """A missing annotation file or image folder of the stage's COCO set (the synthetic set is generated)."""
    if stage.coco is None:
        return []
    try:
        check_coco(stage.coco)
    except UserError as err:
        return [_line("coco", str(err), "coco", CocoConfig, "root")]
    return []


def _line(key: str, message: str, section: str, model: type[BaseModel], field: str | None = None) -> str:
    """``message`` as a problem line of ``key``: led by ``key.<f>`` for the first ``<section>.<f>`` it names that is a
    field of ``model`` (messages name the key they are about), else by ``key.<field>``, else by ``key``."""
    named = next((m[1] for m in re.finditer(rf"\b{section}\.(\w+)", message) if m[1] in model.model_fields), field)
    return f"{key}.{named}: {message}" if named else f"{key}: {message}"

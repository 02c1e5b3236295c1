"""The ``detection`` evaluation of a suite: one dependent detection cell per pre-training cell.

``evaluations: {detection: {...}}`` does not change what a pre-training cell learns (it is left out of the
cell's id). Each pre-training cell gets a detection cell whose id hashes the source id and the stage; a worker
claims it only once its source is complete, fine-tunes a detector from the source's ``model.pt`` (torchvision
backend, or detectron2 where it is installed) and adds the COCO metrics, prefixed ``detection.``, to the
source cell's MLflow run, so tables show them like any other metric (``--metric detection.bbox.AP50``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from bench.core.cost import cell_clock, cost_metrics
from bench.core.states import CellStatus
from bench.core.cost import stage as stage_clock
from bench.core.files import write_json
from bench.schema import ConfigModel
from bench.core.device import pick_device
from bench.train.records import Number, Record, ReportCost
from bench.transfer.coco import CocoConfig
from bench.transfer.detectron2 import Detectron2Config
from bench.transfer.torchvision_det import DetectionConfig

PREFIX = "detection."
#: the detection cell's report in its run directory; on the source's MLflow run it is the artifact ARTIFACT
REPORT, ARTIFACT = "report.json", "detection/report.json"


class SyntheticSet(ConfigModel):
    """The generated COCO-format shapes set (bench/transfer/synthetic.py), written once under the cache."""

    n_train: int = Field(200, ge=1)
    n_val: int = Field(50, ge=1)
    image_size: int = Field(64, ge=32)
    max_objects: int = Field(3, ge=1)
    seed: int = 0


class DetectionStage(ConfigModel):
    """Detection transfer of every pre-training cell: the data, the backend and its protocol."""

    backend: Literal["torchvision", "detectron2"] = Field("torchvision", description="detectron2 needs the docker image")
    coco: CocoConfig | None = Field(None, description="a COCO-format dataset on disk (COCO 2017 layout)")
    synthetic: SyntheticSet | None = Field(None, description="the generated shapes set instead of a dataset on disk")
    detector: DetectionConfig = Field(default_factory=DetectionConfig, description="torchvision backend protocol")
    detectron2: Detectron2Config = Field(default_factory=Detectron2Config, description="detectron2 backend protocol")

    @model_validator(mode="after")
    def _one_dataset(self) -> DetectionStage:
        if (self.coco is None) == (self.synthetic is None):
            raise ValueError("give exactly one of coco (a dataset root) and synthetic (the generated shapes set)")
        return self


def stage_cell_id(source_id: str, stage: DetectionStage) -> str:
    """The detection cell's id: its source and its protocol."""
    return hashlib.sha1(f"{source_id}:{stage.model_dump_json()}".encode()).hexdigest()[:10]


def stage_dataset(stage: DetectionStage, cache_dir: Path) -> CocoConfig:
    """The COCO-format dataset of the stage (generating the synthetic set once under ``cache_dir``)."""
    if stage.coco is not None:
        return stage.coco
    from bench.transfer.synthetic import generate_coco_shapes

    root = generate_coco_shapes(cache_dir / "coco_shapes", **stage.synthetic.model_dump())
    return CocoConfig(root=root, train_split="train", val_split="val")


class StageReport(Record):
    """A finished detection cell (``report.json``, REPORT): its ``detection.`` metrics, what its cost was measured on,
    the pre-training ``model.pt`` it started from (None: random init) and the stage's config."""

    status: CellStatus
    metrics: dict[str, Number]
    cost: ReportCost
    source: str | None
    stage: dict[str, Any]


def run_stage(stage: DetectionStage, source: Path | None, run_dir: Path, cache_dir: Path) -> StageReport:
    """Fine-tune and evaluate a detector from ``source`` (a pre-training ``model.pt``; None: random init).

    Returns the cell's report, also written to ``run_dir/report.json`` (REPORT): ``metrics`` prefixed ``detection.``
    (``detection.bbox.AP50``, ..., and the cost of this attempt, ``detection.cost.wall.train``, ... as
    bench.core.cost records a pre-training cell's: stages ``load``, ``train``, ``eval``, ``checkpoint``), ``cost``
    (device, what the memory figures measure), ``source`` and ``stage`` (the stage's config).
    """
    options = stage.detector if stage.backend == "torchvision" else stage.detectron2
    device = pick_device(options.device)
    with cell_clock(device) as clock:
        with stage_clock("load"):
            coco = stage_dataset(stage, cache_dir)
        if stage.backend == "torchvision":
            from bench.transfer.torchvision_det import detection_transfer

            metrics = detection_transfer(stage.detector, source, coco, run_dir)
        else:
            from bench.transfer.detectron2_train import detectron2_transfer

            metrics = detectron2_transfer(stage.detectron2, source, coco, run_dir)
        metrics.update(cost_metrics(clock, gpus=1))
    report = StageReport(status=CellStatus.COMPLETE, metrics={f"{PREFIX}{key}": value for key, value in metrics.items()},
                         cost=ReportCost(device=device.type, gpus=1, memory=clock.memory),
                         source=None if source is None else str(source), stage=stage.model_dump(mode="json"))
    write_json(report.model_dump(mode="json"), run_dir / REPORT)
    return report

"""Typed records of a run: one epoch's history record (``EpochRecord``) and the run's report (``RunReport``).

Both keep the JSON they always had, so stored results and the MLflow metric names derived from them do not change:

- an epoch record is one flat object ``{"epoch", "loss", "lr", "images_per_s", <the method's logged terms>...}``,
  plus ``"val/knn20.top1"`` and ``"val/rankme"`` on the epochs the online monitor ran (``train.knn_every``).
  ``as_dict`` writes that form and ``from_dict`` reads it; the checkpoint and the model file store it, since
  ``torch.load(weights_only=True)`` reads plain containers and numbers only (a checkpoint of any version resumes).
- a run report is ``metrics.json`` (``bench.runner``): read it back with ``RunReport.model_validate_json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

from bench.core.states import CellStatus

#: the history field of the online kNN monitor (``train.knn_every``): validation 20-NN top-1, what the pruner reads
MONITOR = "val/knn20.top1"
#: the history field of the online monitor's RankMe (``train.knn_every``): effective rank of its features, no labels read
RANKME_MONITOR = "val/rankme"
#: the fields every epoch record has, in the order it is written
FIXED = ("epoch", "loss", "lr", "images_per_s")

#: a measured number: an int stays an int (``knn.k``: 20, ``cost.gpus``: 1), so the JSON and MLflow's params keep it
Number = int | float


class Record(BaseModel):
    """A measured record: strict types, no unknown fields, immutable; NaN and infinities are kept (and written as
    JSON's ``NaN``/``Infinity``, as ``json.dumps`` writes them)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, ser_json_inf_nan="constants")


class Monitor(Record):
    """The online monitor of one epoch on the validation split (never the test split)."""

    knn20_top1: float  #: 20-NN top-1 (``MONITOR``)
    rankme: float  #: RankMe, the effective rank of the validation features (``RANKME_MONITOR``); no labels read


class EpochRecord(Record):
    """One epoch of training: its mean loss, the learning rate at its end (first parameter group), throughput, the
    means of the method's logged outputs (``logs``, by the names the method gives them) and the online monitor."""

    epoch: int  #: 1-based
    loss: float
    lr: float
    images_per_s: float
    logs: dict[str, float] = {}
    monitor: Monitor | None = None

    def as_dict(self) -> dict[str, Number]:
        """The flat form that metrics.json, the checkpoint and the model file hold (module docstring)."""
        flat: dict[str, Number] = {"epoch": self.epoch, "loss": self.loss, "lr": self.lr,
                                   "images_per_s": self.images_per_s, **self.logs}
        if self.monitor is not None:
            flat |= {MONITOR: self.monitor.knn20_top1, RANKME_MONITOR: self.monitor.rankme}
        return flat

    def metrics(self) -> dict[str, float]:
        """Every number of the record but its epoch, by its flat field name (``loss``, ``val/knn20.top1``, ...)."""
        return {name: value for name, value in self.as_dict().items() if name != "epoch"}

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> EpochRecord:
        """The record of a flat form (``as_dict``): the monitor's two fields, the fixed ones, the rest the method's."""
        monitor = Monitor(knn20_top1=flat[MONITOR], rankme=flat[RANKME_MONITOR]) if MONITOR in flat else None
        logs = {k: v for k, v in flat.items() if k not in (*FIXED, MONITOR, RANKME_MONITOR)}
        return cls(**{k: flat[k] for k in FIXED}, logs=logs, monitor=monitor)


class SplitSizes(Record):
    """Images per split: pre-training, probe fitting (train), selection (val) and the reported test split."""

    pretrain: int
    train: int
    val: int
    test: int


class ReportCost(Record):
    """What the cost figures of a report were measured on (the figures are the ``cost.*`` metrics)."""

    device: str  #: the device's name
    gpus: int
    memory: str  #: what the peak memory figures measure (``bench.core.cost``)


class RunReport(Record):
    """A finished run (``metrics.json``): its metrics (test and ``val.*``, ``train.*``, ``cost.*``), the choices made
    on the validation split, how often each test split was read, the split sizes, the history, the epochs a resume
    started from (0 for a fresh run), torch's settings, the cell's fingerprint (``bench.tracking.fingerprint``),
    what its cost was measured on, and its resolved config (``RunConfig.model_dump(mode="json")``)."""

    status: CellStatus
    config_id: str
    metrics: dict[str, Number]
    selection: dict[str, Number]
    test_reads: int
    splits: SplitSizes
    history: list[EpochRecord]
    resumed_from_epoch: float
    torch: dict[str, Any]
    fingerprint: dict[str, Any]
    cost: ReportCost
    config: dict[str, Any]

    @field_validator("history", mode="before")
    @classmethod
    def _flat_history(cls, history: Any) -> Any:
        return [EpochRecord.from_dict(r) if isinstance(r, Mapping) else r for r in history]

    @field_serializer("history")
    def _flatten_history(self, history: list[EpochRecord]) -> list[dict[str, Number]]:
        return [record.as_dict() for record in history]

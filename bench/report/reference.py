"""Published reference numbers of the seed papers and the anchor libraries, and the paper column.

The numbers are in ``published.yaml`` and, for the ViT tables (MoCo v3, DINO, MAE, MVEB Table 7, VICReg Table 5),
``published_vit.yaml``, read in that order; both files have the same format.

Each entry names a method and a dataset with ssl-bench's names (a method that ssl-bench lacks keeps its paper's
name in lower case; ImageNet-1K is ``imagenet``), the metric as its source reports it, the value and the source
(paper or library, and table), and carries the protocol record of the number (``protocol.ProtocolRecord``).

The paper column compares each table cell's protocol records (``ours.cell_record``) with the records of the
published numbers of the same method, evaluation set, metric, kind of probe (kNN, a trained head, detection) and
label fraction, of the cell's backbone when any is published for it (another architecture is another experiment:
MVEB Table 7's ViT-S row, VICReg Table 5's ``resnet50/vit_small`` column): the number shown is the closest one
(fewest must-match fields that differ or are not stated; among equals, the fewest that differ, then the file's
order), marked by how it compares (``protocol.MatchKind``: plain, † or ‡).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.core.states import CellStatus
from bench.config.run import format_validation_error
from bench.errors import ConfigError
from bench.report.labels import is_baseline
from bench.report.ours import cell_record, has_code_reading, published_key
from bench.report.pivot import Pivot, as_tuple
from bench.report.protocol import Comparison, MatchKind, ProtocolRecord, compare
from bench.report.runs import CONFIG_COLUMN, SELECTION_COLUMN

PUBLISHED = Path(__file__).with_name("published.yaml")
#: the ViT tables' numbers (and the ResNet cells of those tables), read after ``published.yaml``
PUBLISHED_VIT = Path(__file__).with_name("published_vit.yaml")


class Reference(ProtocolRecord):
    """One published number and its protocol record. A ``pretrain`` without ``dataset`` was pre-trained on the
    evaluation set."""

    method: str = Field(min_length=1, description="ssl-bench method name; else the paper's, in lower case")
    metric: str = Field("top1", description="top1, top5, box_ap, mask_ap, ap50, as the source reports it")
    value: float
    unit: Literal["percent", "fraction"] = "percent"
    source: str = Field(min_length=1, description="paper or library, and table")
    setting: str | None = Field(None, description="what else sets the number apart: detector, tuning, std. err.")

    @model_validator(mode="before")
    @classmethod
    def _pretrained_on_itself(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(pretrain := data.get("pretrain", {}), dict) and "dataset" not in pretrain:
            return {**data, "pretrain": {**pretrain, "dataset": data.get("dataset")}}
        return data

    def fraction(self) -> float:
        """The value as a fraction, the unit of ssl-bench's accuracy metrics."""
        return self.value / 100 if self.unit == "percent" else self.value

    def citation(self) -> str:
        """Where the number comes from: ``simclr on cifar10: solo-learn README, CIFAR-10 table``."""
        return f"{self.method} on {self.dataset}: {self.source}"


class Published(BaseModel):
    """The file ``published.yaml``: shared protocol records (merged into entries by YAML's ``<<``) and the entries."""

    model_config = ConfigDict(extra="forbid")

    protocols: dict[str, dict[str, Any]] = Field(default_factory=dict)
    references: list[Reference]


@dataclass(frozen=True)
class PaperMatch:
    """The published number shown for one of our table cells, and how its record compares with ours."""

    reference: Reference
    comparison: Comparison

    @property
    def kind(self) -> MatchKind:
        return self.comparison.kind


@functools.cache
def published(*paths: Path) -> tuple[Reference, ...]:
    """Every reference of ``paths`` (default: the bundled ``published.yaml`` then ``published_vit.yaml``), in their
    order of preference."""
    refs: list[Reference] = []
    for path in paths or (PUBLISHED, PUBLISHED_VIT):
        try:
            refs += Published.model_validate(yaml.safe_load(path.read_text())).references
        except ValidationError as err:
            raise ConfigError(f"{path}: {format_validation_error(err)}") from None
    return tuple(refs)


def find_reference(method: str, metric: str, ours: list[ProtocolRecord]) -> PaperMatch | None:
    """The published number closest to our records ``ours`` (the cells of one table cell) of ``method``'s
    ``metric``, among those of our backbone when there are any; None when no entry reports that number."""
    first = ours[0]
    candidates = [r for r in published() if r.method == method and r.dataset == first.dataset and r.metric == metric
                  and _kind(r) == _kind(first) and r.labels.fraction == first.labels.fraction]
    if not candidates:
        return None
    backbones = {record.backbone.name for record in ours}
    candidates = [r for r in candidates if {r.backbone.name} == backbones] or candidates
    matters = has_code_reading(method)
    compared = [(compare(r, ours, reading_matters=matters), i, r) for i, r in enumerate(candidates)]
    comparison, _, reference = min(compared, key=lambda item: (item[0].distance, len(item[0].differ), item[1]))
    return PaperMatch(reference, comparison)


def group_reference(cells: pd.DataFrame, metric: str) -> PaperMatch | None:
    """The published number for a group of ``suite_runs`` rows (a table cell): their complete cells (all of them when
    none completed) must share one method that is no baseline; None otherwise, or when nothing is published."""
    key = published_key(metric)
    complete = cells[cells["status"] == CellStatus.COMPLETE]
    rows = complete if len(complete) else cells
    methods = set(rows["method"])
    if key is None or len(methods) != 1 or is_baseline(method := next(iter(methods))) or CONFIG_COLUMN not in rows:
        return None
    ours = [cell_record(json.loads(config), _report(json.loads(selection)), metric)
            for config, selection in zip(rows[CONFIG_COLUMN], rows[SELECTION_COLUMN])]
    if len({record.dataset for record in ours}) != 1:
        return None
    return find_reference(str(method), key.name, list(dict.fromkeys(ours)))


def paper_column(table: Pivot, df: pd.DataFrame) -> Pivot:
    """``table`` with ``paper`` (the published values beside each column, NaN where none), ``matches`` (their
    ``PaperMatch``) and ``sources``; ``df`` is the ``suite_runs`` frame the table was made from."""
    if published_key(table.metric) is None:
        raise ConfigError(f"no published numbers for the metric {table.metric}; the paper column exists for the test "
                          "accuracies of kNN, the probes and fine-tuning: knn20.top1, linear.top1, logreg_1pct.top1, ...")
    keys = table.rows + table.cols
    kept = df.dropna(subset=keys)
    groups = {label: rows for label, rows in kept.groupby(keys, sort=False)}
    values, matches, sources = [], [], {}
    for row in table.mean.index:
        line, found = [], []
        for column in table.mean.columns:
            cells = groups.get(as_tuple(row) + as_tuple(column))
            match = None if cells is None else group_reference(cells, table.metric)
            line.append(math.nan if match is None else match.reference.fraction())
            found.append(match)
            if match is not None:
                sources.setdefault(match.reference.citation())
        values.append(line)
        matches.append(found)
    paper = pd.DataFrame(values, index=table.mean.index, columns=table.mean.columns)
    frame = pd.DataFrame(matches, index=table.mean.index, columns=table.mean.columns, dtype=object)
    return replace(table, paper=paper, matches=frame, sources=tuple(sources))


def _kind(record: ProtocolRecord) -> str:
    """kNN, a trained head (linear, logistic, fine-tuned; also a head whose training is not stated) or detection."""
    return record.probe.type.kind if record.probe.type is not None else "classifier"


def _report(selection: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a cell's report.json that ``cell_record`` reads, from its logged selection."""
    return {} if selection is None else {"selection": selection}

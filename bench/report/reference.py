"""Published reference numbers of the seed papers and the anchor libraries (``published.yaml``), and the paper column.

Each entry names a method and a dataset with ssl-bench's names (a method that ssl-bench lacks keeps its paper's
name in lower case; ImageNet-1K is ``imagenet``), the protocol, the metric as its source reports it, the backbone,
the pre-training epochs and the source (paper or library, and table). Values are copied literally from the
sources, in percent unless ``unit: fraction``. Entries are in order of preference: a table cell shows the first
entry that matches it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.config.run import format_validation_error
from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.report.table import Pivot

PUBLISHED = Path(__file__).with_name("published.yaml")
#: the ViT tables' numbers, read after ``published.yaml``
PUBLISHED_VIT = Path(__file__).with_name("published_vit.yaml")
#: ``linear.top1``, ``linear_1pct.top1``, ``finetune.top5`` (label fractions are written ``<x>pct``)
PROBE_METRIC = re.compile(r"(?P<protocol>linear|finetune)(?:_(?P<pct>[\d.]+)pct)?\.(?P<metric>top\d+)")
#: ``knn20.top1``
KNN_METRIC = re.compile(r"knn(?P<k>\d+)\.(?P<metric>top\d+)")
#: ``cifar10.linear.top1``: a protocol on another labelled set than the pre-training one (``eval.datasets``)
OTHER_SET = re.compile(r"(?P<dataset>[a-z][a-z0-9_]*)\.(?P<rest>(?:linear|finetune|knn).*)")


class Reference(BaseModel):
    """One published number."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1, description="ssl-bench method name; else the paper's, in lower case")
    dataset: str = Field(min_length=1, description="ssl-bench dataset name; else e.g. imagenet, imagenet100, coco")
    protocol: Literal["linear", "knn", "semi", "finetune", "detection"]
    metric: str = Field("top1", description="top1, top5, box_ap, mask_ap, ap50, as the source reports it")
    value: float
    unit: Literal["percent", "fraction"] = "percent"
    backbone: str = Field(min_length=1)
    epochs: int | None = Field(description="pre-training epochs (null: the source does not say)")
    source: str = Field(min_length=1, description="paper or library, and table")
    k: int | None = Field(None, ge=1, description="kNN only: the number of neighbours")
    labels: str | None = Field(None, description="fraction of the labels when not all, e.g. '1%'")
    pretrain: str | None = Field(None, description="pre-training dataset when it is not the evaluation dataset")
    batch_size: int | None = Field(None, ge=1)
    setting: str | None = Field(None, description="what else sets the number apart: crops, detector, probe, std. err.")

    @model_validator(mode="after")
    def _knn_has_k(self) -> Reference:
        if (self.protocol == "knn") != (self.k is not None):
            raise ValueError("give k for a kNN entry, and only for one")
        return self

    def fraction(self) -> float:
        """The value as a fraction, the unit of ssl-bench's accuracy metrics."""
        return self.value / 100 if self.unit == "percent" else self.value

    def citation(self) -> str:
        """Where the number comes from, with the setting it was measured in."""
        epochs = f"{self.epochs} epochs" if self.epochs else "epochs not stated"
        extra = f", {self.setting}" if self.setting else ""
        return f"{self.method} on {self.dataset}: {self.source} ({self.backbone}, {epochs}{extra})"


class Published(BaseModel):
    """The file ``published.yaml``."""

    model_config = ConfigDict(extra="forbid")

    references: list[Reference]


class Lookup(NamedTuple):
    """What an ssl-bench metric corresponds to in the papers."""

    protocol: str
    metric: str
    labels: str | None
    k: int | None
    evaluated_on: str | None = None  #: the labelled set of ``eval.datasets``; None: the pre-training set


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


def metric_lookup(metric: str) -> Lookup | None:
    """The protocol of an ssl-bench metric: ``linear.top1`` -> linear probe, ``linear_1pct.top1`` -> with 1% of the
    labels, ``knn20.top1`` -> kNN with k = 20, ``finetune.top1`` -> fine-tuning, ``cifar10.linear.top1`` -> the
    linear probe on CIFAR-10 after pre-training elsewhere; None for any other metric."""
    if (other := OTHER_SET.fullmatch(metric)) and (lookup := metric_lookup(other["rest"])) and lookup.evaluated_on is None:
        return lookup._replace(evaluated_on=other["dataset"])
    if match := PROBE_METRIC.fullmatch(metric):
        labels = f"{match['pct']}%" if match["pct"] else None
        return Lookup(match["protocol"], match["metric"], labels, None)
    if match := KNN_METRIC.fullmatch(metric):
        return Lookup("knn", match["metric"], None, int(match["k"]))
    return None


def find_reference(method: str, dataset: str, lookup: Lookup, *, backbone: str | None = None,
                   epochs: int | None = None) -> Reference | None:
    """The preferred published number of ``method`` pre-trained on ``dataset`` and evaluated under ``lookup``
    (on ``dataset`` itself, or on ``lookup.evaluated_on``)."""
    evaluated_on, pretrain = (lookup.evaluated_on, dataset) if lookup.evaluated_on else (dataset, None)
    return next((r for r in published() if r.method == method and r.dataset == evaluated_on and r.pretrain == pretrain
                 and (r.protocol, r.metric, r.labels, r.k) == lookup[:4]
                 and backbone in (None, r.backbone) and epochs in (None, r.epochs)), None)


def paper_column(table: Pivot, *, backbone: str | None = None, epochs: int | None = None) -> Pivot:
    """``table`` with ``paper`` (published values beside each column, NaN where none) and their ``sources``.

    The table's rows must include ``method`` and its columns ``dataset``; ``backbone`` and ``epochs`` keep only
    references of that backbone or that many pre-training epochs.
    """
    lookup = metric_lookup(table.metric)
    if lookup is None:
        raise ConfigError(f"no published numbers for the metric {table.metric}; the paper column exists for "
                          "linear.top1/top5, linear_<x>pct.top1, knn<k>.top1/top5 and finetune.top1/top5")
    if "method" not in table.rows or "dataset" not in table.cols:
        raise ConfigError("the paper column needs methods as rows and datasets as columns: --rows method --cols dataset")
    methods = table.mean.index.get_level_values("method")
    datasets = table.mean.columns.get_level_values("dataset")
    values, sources = [], {}
    for method in methods:
        line = []
        for dataset in datasets:
            ref = find_reference(str(method), str(dataset), lookup, backbone=backbone, epochs=epochs)
            line.append(math.nan if ref is None else ref.fraction())
            if ref is not None:
                sources.setdefault(ref.citation())
        values.append(line)
    paper = pd.DataFrame(values, index=table.mean.index, columns=table.mean.columns)
    return replace(table, paper=paper, sources=tuple(sources))

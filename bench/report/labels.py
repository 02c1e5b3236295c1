"""How values are written in every report: numbers of a metric, key values, and the baseline rows' names.

Accuracy metrics (``*.top1``, ``*.top5``: fractions in MLflow) are shown in percent with one decimal, any other
metric with three significant digits. The baselines are rows that are no SSL method (``Baseline``): their cells'
method is ``random_init`` or ``raw_pixels``; they are named "random init" and "raw pixels", listed after the
methods and never marked best.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from bench.report.metric_key import parse_metric

#: the text of a table cell that has no number
EMPTY = "–"


class Baseline(StrEnum):
    """Reference rows that are no SSL method: the backbone at initialisation, and the raw pixels."""

    RANDOM_INIT = "random_init"
    RAW_PIXELS = "raw_pixels"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


def is_baseline(method: Any) -> bool:
    """Whether a cell's method is one of the ``Baseline`` rows."""
    return method in set(Baseline)


def method_label(method: Any) -> str:
    """A method as a row names it: ``simclr``, or a baseline's label (``random init``)."""
    return Baseline(method).label if is_baseline(method) else label_text(method)


def label_text(value: Any) -> str:
    """A key value as shown in a header or a row label (``0.001``, ``16-16``, ``simclr``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_value(metric: str, value: float, *, signed: bool = False) -> str:
    """A number of ``metric`` as shown: percent with one decimal for accuracies, else 3 significant digits."""
    if math.isnan(value):
        return EMPTY
    sign = "+" if signed else ""
    return f"{value * 100:{sign}.1f}" if parse_metric(metric).is_accuracy else f"{value:{sign}.3g}"


def format_p(p: float) -> str:
    """A p- or q-value with three decimals, ``<0.001`` below that."""
    return EMPTY if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"

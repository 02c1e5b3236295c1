"""What a final metric's name says, parsed in one place for every report module.

A final metric is named ``[val.][<dataset>.]<protocol>.<name>``:

- ``val.``: the validation twin of a test metric (``val.knn20.top1``), used to select; without it, the test split.
- ``<dataset>.``: a protocol on another labelled set than the pre-training one (``eval.datasets``: ``cifar10.linear.top1``).
- ``<protocol>``: ``knn<k>`` (``knn``: the k chosen on the validation split), a probe ``linear``, ``logreg``,
  ``linear_aug`` or ``finetune``, optionally on a label fraction (``linear_1pct``), ``detection.bbox`` /
  ``detection.segm``, or figures that are no evaluation: ``diag`` (features), ``train`` and a stage's
  ``detection.train``.
- ``<name>``: ``top1``, ``top5``, ``AP``, ``AP50``, ``effective_rank``, ``seconds``, ...

A name that does not parse this way is a metric of family ``OTHER`` (its protocol: all before the last dot).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum


class Split(StrEnum):
    """The labelled split a metric was measured on."""

    TEST = "test"
    VAL = "val"


class Family(StrEnum):
    """What kind of figure a metric is."""

    KNN = "knn"
    LINEAR = "linear"
    LOGREG = "logreg"
    LINEAR_AUG = "linear_aug"
    FINETUNE = "finetune"
    DETECTION = "detection"
    DIAG = "diag"
    TRAIN = "train"
    OTHER = "other"


#: the families that measure an evaluation protocol (the others describe training or the features)
EVALUATIONS = frozenset({Family.KNN, Family.LINEAR, Family.LOGREG, Family.LINEAR_AUG, Family.FINETUNE, Family.DETECTION})
#: the number a protocol is known by (a leaderboard column): top-1 accuracy, or box/mask AP
LEAD_NAMES = ("top1", "AP")
#: the part after ``val.``: an optional dataset prefix, then a protocol and the metric's name
KEY = re.compile(r"""
    (?:(?P<dataset>[a-z][a-z0-9_]*)\.(?=(?:knn[\d.]|linear|logreg|finetune|diag\.)))?
    (?P<protocol>
        (?P<knn>knn)(?P<k>\d+)?
      | (?P<probe>linear_aug|linear|logreg|finetune)(?:_(?P<pct>\d+(?:\.\d+)?)pct)?
      | detection\.(?:bbox|segm)
      | (?:detection\.)?(?P<aux>diag|train)
    )
    \.(?P<name>[A-Za-z0-9_]+)
""", re.VERBOSE)
ACCURACY = re.compile(r"top\d+|acc\w*")
#: metrics whose name holds one of these words are better when lower
LOWER_IS_BETTER = ("loss", "error")
VAL_PREFIX = "val."


@dataclass(frozen=True)
class MetricKey:
    """One final metric's name, parsed (``parse_metric``)."""

    key: str  #: the name as logged
    split: Split
    dataset: str | None  #: the ``eval.datasets`` set; None: the pre-training set
    family: Family
    protocol: str  #: ``knn20``, ``linear_1pct``, ``detection.bbox``, ``diag``, ``detection.train``, ...
    name: str  #: ``top1``, ``AP50``, ``effective_rank``, ...
    k: int | None = None  #: kNN: the number of neighbours (None for ``knn``: chosen on validation)
    labels: str | None = None  #: a probe on a label fraction: ``1%``

    @property
    def is_evaluation(self) -> bool:
        """Whether it measures an evaluation protocol (kNN, probes, fine-tuning, detection)."""
        return self.family in EVALUATIONS

    @property
    def is_accuracy(self) -> bool:
        """Accuracies (``top1``, ``top5``) are fractions, shown in percent."""
        return ACCURACY.fullmatch(self.name) is not None

    @property
    def lower_is_better(self) -> bool:
        return any(word in self.name for word in LOWER_IS_BETTER)

    @property
    def is_headline(self) -> bool:
        """A test-split evaluation worth a table or a plot of its own: all but the top-5 accuracies."""
        return self.split == Split.TEST and self.is_evaluation and self.name != "top5"

    @property
    def is_lead(self) -> bool:
        """The number its protocol is known by (top-1, AP), on the test split: a leaderboard column."""
        return self.split == Split.TEST and self.is_evaluation and self.name in LEAD_NAMES


@functools.cache
def parse_metric(key: str) -> MetricKey:
    """The parts of a final metric's name (see the module docstring)."""
    split = Split.VAL if key.startswith(VAL_PREFIX) else Split.TEST
    rest = key.removeprefix(VAL_PREFIX)
    match = KEY.fullmatch(rest)
    if match is None:
        protocol, _, name = rest.rpartition(".")
        return MetricKey(key, split, None, Family.OTHER, protocol, name)
    if match["knn"]:
        family = Family.KNN
    elif match["probe"]:
        family = Family(match["probe"])
    else:
        family = Family(match["aux"]) if match["aux"] else Family.DETECTION
    return MetricKey(key, split, match["dataset"], family, match["protocol"], match["name"],
                     k=int(match["k"]) if match["k"] else None, labels=f"{match['pct']}%" if match["pct"] else None)

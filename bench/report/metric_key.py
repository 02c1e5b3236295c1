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
#: the probe protocols, longest first (``linear_aug`` before ``linear``)
PROBES = (Family.LINEAR_AUG, Family.LINEAR, Family.LOGREG, Family.FINETUNE)
#: the families that may be measured on another labelled set (``eval.datasets``): a dataset prefix before them
ON_DATASETS = frozenset({Family.KNN, *PROBES, Family.DIAG})
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
        return (self.name.startswith("top") and self.name[3:].isdigit()) or self.name.startswith("acc")

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
    """The parts of a final metric's name (see the module docstring), read token by token."""
    split = Split.VAL if key.startswith(VAL_PREFIX) else Split.TEST
    rest = key.removeprefix(VAL_PREFIX)
    *head, name = _tokens(rest)
    dataset, parsed = None, _protocol(head) if _is_word(name) else None
    if parsed is None and len(head) > 1 and _is_dataset(head[0]) and _is_word(name):
        parsed = _protocol(head[1:])
        if parsed is not None and parsed[0] in ON_DATASETS:
            dataset, head = head[0], head[1:]
        else:
            parsed = None
    if parsed is None:
        protocol, _, name = rest.rpartition(".")
        return MetricKey(key, split, None, Family.OTHER, protocol, name)
    family, k, labels = parsed
    return MetricKey(key, split, dataset, family, ".".join(head), name, k=k, labels=labels)


def _tokens(rest: str) -> list[str]:
    """``rest`` split at its dots, but for the decimal point of a label fraction (``linear_0.5pct``)."""
    tokens: list[str] = []
    for token in rest.split("."):
        fraction = tokens and tokens[-1].rpartition("_")[2].isdigit() and token.endswith("pct") and token[:-3].isdigit()
        if fraction:
            tokens[-1] += f".{token}"
        else:
            tokens.append(token)
    return tokens


def _protocol(tokens: list[str]) -> tuple[Family, int | None, str | None] | None:
    """(family, kNN k, label fraction) of a protocol's dot-separated tokens; None when they name no protocol."""
    if len(tokens) == 2 and tokens[0] == "detection":
        second = tokens[1]
        return (Family.DETECTION, None, None) if second in ("bbox", "segm") else (
            (Family.TRAIN, None, None) if second == Family.TRAIN else None)  # detection.diag: a set named detection
    if len(tokens) != 1:
        return None
    (token,) = tokens
    if token in (Family.DIAG, Family.TRAIN):
        return Family(token), None, None
    if token.startswith("knn") and (token == "knn" or token[3:].isdigit()):
        return Family.KNN, int(token[3:]) if token[3:] else None, None
    for probe in PROBES:
        fraction = token.removeprefix(f"{probe}_").removesuffix("pct")
        if token == probe:
            return probe, None, None
        if token.startswith(f"{probe}_") and token.endswith("pct") and _is_number(fraction):
            return probe, None, f"{fraction}%"
    return None


def _is_number(text: str) -> bool:
    """Digits, with at most one decimal point between digits (``1``, ``0.5``)."""
    whole, _, part = text.partition(".")
    return whole.isdigit() and (part.isdigit() or not _)


def _is_word(text: str) -> bool:
    return bool(text) and all(c.isalnum() or c == "_" for c in text) and text.isascii()


def _is_dataset(text: str) -> bool:
    """A dataset's name: a lower-case letter, then lower-case letters, digits and underscores."""
    return _is_word(text) and text[0].islower() and text == text.lower() and text[0].isalpha()

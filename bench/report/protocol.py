"""The protocol record of a number (``docs/protocols.md`` §4), published or ours, and how two records compare.

A record says how a top-1 (or top-5) accuracy was measured: the evaluation set and split, what was pre-trained on
what, at which resolution, with which backbone, epochs, batch and views, by which probe (kNN k and T, linear on
cached features, linear on augmented views, online linear, logistic regression, fine-tuning), on which labels,
how its hyper-parameters were selected, and which reading of the method (paper or official code) produced it.
``None`` means the source does not say (shown as "not stated").

``compare`` splits the fields in two. The must-match fields (``MUST_MATCH``) decide whether a published number is
comparable: all equal is an exact match, shown plainly; any known difference is a partial match (†); no known
difference but some field not stated is unknown (‡). The should-match fields (``SHOULD_MATCH``) are listed when
both records know them and they differ, but decide nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ProbeType(StrEnum):
    """How the number was read off the pre-trained backbone."""

    KNN = "knn"  #: weighted k-nearest neighbours on frozen features
    LINEAR_CACHED = "linear_cached"  #: a linear head on cached, un-augmented frozen features
    LINEAR_AUG = "linear_aug"  #: a linear head on augmented views (RRC + flip) through the frozen backbone
    LINEAR_ONLINE = "linear_online"  #: a linear head trained during pre-training on the SSL views (solo-learn CIFAR)
    LOGREG = "logreg"  #: L-BFGS logistic regression on cached features
    FINETUNE = "finetune"  #: the whole network fine-tuned with a head (semi-supervised label fractions too)
    DETECTION = "detection"  #: a detector fine-tuned from the backbone (the detector is named in ``setting``)

    @property
    def kind(self) -> str:
        """What kind of number it is: ``knn``, ``classifier`` (a trained head, frozen or fine-tuned) or ``detection``;
        numbers of different kinds are never compared."""
        return self.value if self in (ProbeType.KNN, ProbeType.DETECTION) else "classifier"


class Selection(StrEnum):
    """How the reported number's hyper-parameters (probe lr, epoch, k) were chosen."""

    HELDOUT_VAL = "heldout_val"  #: on a validation split held out of train; the test split read once
    FIXED_A_PRIORI = "fixed_a_priori"  #: fixed before any run (no choice made)
    TEST_MAX_OVER_EPOCHS = "test_max_over_epochs"  #: the best test number over the probe's (or training's) epochs
    TEST_GRID = "test_grid"  #: a grid of settings scored on the test split, the best reported
    LAST_EPOCH = "last_epoch"  #: the last epoch's test number, no choice made on test


class Variant(StrEnum):
    """The first layers of a ResNet."""

    IMAGENET_STEM = "imagenet_stem"  #: 7x7 stride-2 conv1 and max-pool (torchvision)
    CIFAR_STEM = "cifar_stem"  #: 3x3 stride-1 conv1, no max-pool
    SMALL_KERNEL = "small_kernel"  #: 3x3 stride-1 conv1, max-pool kept (MV-MR's code)


#: a record's reading: ``paper`` / ``code`` (``MethodParams.reading_in_effect``); ours may be ``mixed``
RecordReading = Literal["paper", "code", "mixed"]
#: views as a paper writes them: ``2x224``, ``2x224+6x96``
Views = Annotated[str, Field(pattern=r"^\d+x\d+(\+\d+x\d+)*$")]
#: the evaluation images: ``none`` (as stored), ``resize96`` (squashed), ``resize256_center224`` (resize the
#: shorter side, then a centre crop)
EvalResize = Annotated[str, Field(pattern=r"^(none|resize\d+(_center\d+)?)$")]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pretrain(_Part):
    dataset: str | None = Field(None, description="the pre-training set (ssl-bench's name)")
    split: str | None = Field(None, description="train | train+unlabeled | trainval")


class Backbone(_Part):
    name: str | None = Field(None, description="resnet18, resnet50, small_cnn, ...")
    variant: Variant | None = Field(None, description="a ResNet's stem; null for other backbones")


class Resolution(_Part):
    pretrain: int | None = Field(None, ge=1, description="side of the (global) pre-training views")
    eval: int | None = Field(None, ge=1, description="side of the images the probe sees at test time")
    eval_resize: EvalResize | None = None


class Probe(_Part):
    type: ProbeType | None = Field(None, description="null: a trained head whose training the source does not state")
    k: int | None = Field(None, ge=1, description="kNN: neighbours")
    t: float | None = Field(None, gt=0, description="kNN: temperature")
    epochs: int | None = Field(None, ge=1)
    optimizer: str | None = Field(None, description="sgd | lars | lbfgs | adam")
    lr: float | Literal["grid"] | None = Field(None, description="the learning rate, or 'grid' when chosen from one")
    batch_size: int | None = Field(None, ge=1)
    augmentation: Literal["none", "rrc_flip", "ssl_views"] | None = None
    bn_on_features: bool | None = Field(None, description="features standardised / batch-normalised before the head")
    fit_on: Literal["train", "train+val"] | None = Field(None, description="what the final head or kNN bank was fitted on")


class Labels(_Part):
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of the labelled train split the probe is fitted on")
    subset: str | None = Field(None, description="how a fraction was drawn: class_balanced | simclr_lists | "
                               "random_with_replacement (null: not stated)")


class ProtocolRecord(BaseModel):
    """How one number was measured (see the module docstring); ``Reference`` adds the number itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, description="the evaluation set (ssl-bench's name; imagenet = ImageNet-1K)")
    eval_split: str | None = Field("test", description="the split the number is measured on (ImageNet: its val)")
    pretrain: Pretrain = Pretrain()
    backbone: Backbone = Backbone()
    epochs: int | None = Field(None, ge=0, description="pre-training epochs")
    batch_size: int | None = Field(None, ge=1, description="pre-training batch, global")
    views: Views | None = None
    augmentation: str | None = Field(None, description="the pre-training recipe family: simclr, byol, dino, ...")
    resolution: Resolution = Resolution()
    probe: Probe
    labels: Labels = Labels()
    selection: Selection | None = None
    reading: RecordReading | None = Field(None, description="which reading of the method produced the number")

    def field(self, path: str) -> Any:
        """The value at a dotted ``path`` (``probe.k``); an enum as its value."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value.value if isinstance(value, StrEnum) else value


#: the fields that must be equal for a published number to be comparable (``docs/protocols.md`` §4.2)
MUST_MATCH = ("dataset", "pretrain.dataset", "pretrain.split", "eval_split", "backbone.name", "backbone.variant", "epochs",
              "batch_size", "views", "resolution.pretrain", "resolution.eval", "resolution.eval_resize", "probe.type",
              "probe.k", "probe.t", "labels.fraction", "labels.subset", "reading")
#: ``MUST_MATCH`` as a caption says it
MUST_MATCH_TEXT = ("evaluation set and split, pre-training set and split, backbone and stem, epochs, batch size, views, "
                   "resolution, probe type (k and T for kNN), labels, and the method's reading (paper or code)")
#: the fields shown when they differ, which do not decide comparability
SHOULD_MATCH = ("selection", "augmentation", "probe.epochs", "probe.optimizer", "probe.lr", "probe.batch_size",
                "probe.augmentation", "probe.bn_on_features", "probe.fit_on")


class MatchKind(StrEnum):
    """How a published number's record compares with ours (csv ``paper_match``)."""

    EXACT = "exact"  #: every must-match field equal: shown plainly
    PARTIAL = "partial"  #: some must-match field differs: †
    UNKNOWN = "unknown"  #: none differs, but the source does not state some: ‡

    @property
    def mark(self) -> str:
        return {MatchKind.EXACT: "", MatchKind.PARTIAL: "†", MatchKind.UNKNOWN: "‡"}[self]


@dataclass(frozen=True)
class Diff:
    """One field where the records differ: the published value and ours (several of ours where the cells differ)."""

    field: str
    theirs: Any
    ours: tuple[Any, ...]

    def text(self) -> str:
        """``epochs: 1000 vs 6``, ``batch_size: not stated``."""
        if self.theirs is None:
            return f"{self.field}: not stated"
        return f"{self.field}: {_show(self.theirs)} vs {'/'.join(_show(v) for v in self.ours)}"

    def csv(self) -> str:
        """``epochs=1000|6``, ``batch_size=?|256``."""
        theirs = "?" if self.theirs is None else _show(self.theirs)
        return f"{self.field}={theirs}|{'/'.join(_show(v) for v in self.ours)}"


@dataclass(frozen=True)
class Comparison:
    """A published record against ours: the must-match differences, the must-match fields the source does not state
    (``Diff`` with ``theirs`` None), and the should-match differences."""

    differ: tuple[Diff, ...]
    unstated: tuple[Diff, ...]
    minor: tuple[Diff, ...]

    @property
    def kind(self) -> MatchKind:
        return MatchKind.PARTIAL if self.differ else MatchKind.UNKNOWN if self.unstated else MatchKind.EXACT

    @property
    def distance(self) -> int:
        """How far from comparable: must-match fields that differ or are not stated (0 for an exact match)."""
        return len(self.differ) + len(self.unstated)

    def note(self) -> str:
        """The footnote: ``epochs: 1000 vs 6; batch_size: not stated; also selection: ...``; empty for a plain match."""
        main = "; ".join(d.text() for d in (*self.differ, *self.unstated))
        minor = "; ".join(d.text() for d in self.minor)
        return f"{main}; also {minor}" if main and minor else main or (f"also {minor}" if minor else "")

    def csv(self) -> str:
        """``paper_diff``: every difference as ``field=theirs|ours``, ``;``-separated (must-match ones first)."""
        return ";".join(d.csv() for d in (*self.differ, *self.unstated, *self.minor))


def compare(theirs: ProtocolRecord, ours: list[ProtocolRecord], *, reading_matters: bool) -> Comparison:
    """``theirs`` against our records (one per cell of a table cell; they usually agree). ``reading_matters``: the
    method has a code reading (``MethodParams.code_reading``); else the reading is no must-match field."""
    skip = set() if reading_matters else {"reading"}
    if theirs.probe.type != ProbeType.KNN:
        skip |= {"probe.k", "probe.t"}
    if theirs.labels.fraction == 1:
        skip.add("labels.subset")
    differ, unstated, minor = [], [], []
    for path in MUST_MATCH:
        if path in skip:
            continue
        value, mine = theirs.field(path), _values(ours, path)
        if value is None:
            unstated.append(Diff(path, None, mine))
        elif any(not _equal(value, v) for v in mine):
            differ.append(Diff(path, value, mine))
    for path in SHOULD_MATCH:
        value, mine = theirs.field(path), _values(ours, path)
        if value is not None and all(v is not None for v in mine) and any(not _equal(value, v) for v in mine):
            minor.append(Diff(path, value, mine))
    return Comparison(tuple(differ), tuple(unstated), tuple(minor))


def _values(records: list[ProtocolRecord], path: str) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(record.field(path) for record in records))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _show(value: Any) -> str:
    if value is None:  # ours: the config does not say (a published value that is not stated never gets here)
        return "unknown"
    return f"{value:g}" if isinstance(value, float) else str(value)

"""What a cell evaluates after pre-training (``eval``): kNN, the probe protocols, label fractions, fine-tuning,
diagnostics and more labelled sets."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from bench.data.registry import DatasetConfig, dataset_spec
from bench.errors import ConfigError
from bench.eval.finetune import FinetuneConfig
from bench.eval.logreg import LogRegConfig
from bench.eval.probes import PROBE_NAMES, ProbeConfig
from bench.schema import ConfigModel


class EvalConfig(ConfigModel):
    """Evaluations run after pre-training, on the frozen (or fine-tuned) backbone."""

    knn: bool = True
    knn_k: list[int] = Field(default_factory=lambda: [10, 20, 100, 200], description="every k is reported (knn<k>.top1); "
                             "knn.top1 is the k chosen on validation")
    knn_temperature: float = Field(0.07, gt=0)
    probes: list[ProbeConfig] = Field(default_factory=lambda: [LogRegConfig()], description="probe protocols by name: "
                                      f"{', '.join(PROBE_NAMES)} (a bare name takes the defaults); [] runs none")
    label_fractions: list[float] = Field(default_factory=list, description="every probe on class-balanced label subsets of train")
    finetune: FinetuneConfig | None = Field(None, description="full fine-tuning protocol (off by default)")
    diagnostics: bool = True
    datasets: list[DatasetConfig] = Field(
        default_factory=list,
        description="more labeled sets the frozen backbone is evaluated on (kNN, linear probe, label fractions), "
        "each metric prefixed with the set's name, e.g. cifar10.linear.top1 after pre-training on STL-10",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_linear_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "linear" in data:
            raise ValueError("'linear' was replaced by 'probes', a list of probe protocols: e.g. probes: [logreg, "
                             "{name: linear, epochs: 100}] (linear: null becomes probes: [])")
        return data

    @field_validator("probes", mode="before")
    @classmethod
    def _named_probes(cls, v: Any) -> Any:
        return [{"name": p} if isinstance(p, str) else p for p in v] if isinstance(v, list) else v

    @field_validator("probes")
    @classmethod
    def _distinct_probes(cls, v: list[ProbeConfig]) -> list[ProbeConfig]:
        names = [p.name for p in v]
        if len(set(names)) != len(names):
            raise ValueError(f"probes {names} lists a protocol twice; each names its metrics (linear.top1)")
        return v

    @field_validator("knn_k")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError("give a non-empty list of distinct k >= 1, e.g. [10, 20, 100, 200]")
        return v

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, v: list[DatasetConfig]) -> list[DatasetConfig]:
        for extra in v:
            if extra.name == "val":
                raise ValueError("a dataset named 'val' would read as the validation split in metric names (val.linear.top1)")
            try:
                dataset_spec(extra.name)
            except ConfigError as err:
                raise ValueError(str(err)) from None
        names = [extra.name for extra in v]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets {names} lists a name twice; each set's metrics are prefixed with its name")
        return v

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError("label fractions must lie in (0, 1]")
        return v

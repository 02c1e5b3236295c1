"""The fully resolved configuration of one run (one cell of a suite)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from bench.config.overrides import normalize_sections
from bench.data.registry import DatasetConfig, dataset_spec
from bench.data.views import ViewSpec, build_recipe
from bench.errors import ConfigError
from bench.eval.finetune import FinetuneConfig
from bench.eval.logreg import LogRegConfig
from bench.eval.probes import PROBE_NAMES, ProbeConfig
from bench.methods import MethodParams, method_class
from bench.models.backbones import BackboneConfig
from bench.schema import ConfigModel, PathField
from bench.train.optim import OptimizerConfig
from bench.train.schedule import ScheduleConfig


class TrainConfig(ConfigModel):
    """Engine settings: precision, checkpoints, monitors. They do not change what is learned."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    compile: bool = Field(False, description="torch.compile the backbone")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible CPU runs)")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    sync_bn: bool = Field(False, description="several processes per cell: batch norm over the global batch (SyncBN)")
    checkpoint_every: int = Field(1, ge=0, description="checkpoint every N epochs (0: only at the end and on SIGTERM)")
    knn_every: int = Field(0, ge=0, description="online kNN monitor on the validation split every K epochs (0: off)")
    knn_bank: int = Field(5000, ge=10, description="online kNN: a fixed class-balanced bank of about this many training samples")
    log_every: int = Field(20, ge=1, description="fetch metrics from the device every N steps")
    progress: bool = Field(True, description="rich progress bar when attached to a terminal")
    workers: int = Field(4, ge=0, description="DataLoader workers for streamed (image folder) datasets")
    cache_dir: PathField = Field(Path("results/cache"), description="per-dataset caches (e.g. MV-MR's representations)")


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


class RunConfig(ConfigModel):
    method: SerializeAsAny[MethodParams]
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    augment: str | list[ViewSpec] = Field(description="view recipe name or explicit list of views")
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2)
    seed: int = 0
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("augment")
    @classmethod
    def _known_recipe(cls, v: str | list[ViewSpec]) -> str | list[ViewSpec]:
        build_recipe(v)
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: DatasetConfig) -> DatasetConfig:
        dataset_spec(v.name)
        return v


def resolve_run_config(data: dict[str, Any]) -> RunConfig:
    """Validate a (partial) run config, filling the method's paper defaults.

    The method section picks the hyper-parameter model; the optimizer and the view recipe default to
    the method's own and any given field overrides them. Errors become one ConfigError naming the key of each.
    """
    data = normalize_sections(copy.deepcopy(data))
    method = data.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError("method: missing; set it, e.g. method=simclr")
    cls = method_class(method["name"])
    lines = []
    try:
        data["method"] = cls.Params.model_validate(method)
    except ValidationError as err:
        lines = problem_lines(err, prefix="method")
        data["method"] = cls.Params.model_validate({"name": method["name"]})  # the paper's, to find the other problems too
    optimizer = data.get("optimizer") or {}
    if not isinstance(optimizer, dict):
        raise ConfigError("optimizer: expected a section such as {name: lars, lr: 0.3}")
    data["optimizer"] = {**cls.optimizer, **optimizer}
    data.setdefault("augment", cls.recipe)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        lines += problem_lines(err)
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    return config


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the dotted key path."""
    return "invalid config:\n  " + "\n  ".join(problem_lines(err, prefix))


def problem_lines(err: ValidationError, prefix: str = "") -> list[str]:
    """The problems of ``err``, one line each, led by its dotted key path (under ``prefix``)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key (check its spelling)")
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return lines


#: engine settings that never change what a run learns; left out of its identity
ENGINE_ONLY = frozenset({"device", "progress", "threads", "workers", "log_every", "checkpoint_every", "cache_dir"})


def config_id(cfg: RunConfig) -> str:
    """Short hash of the canonical resolved config: the same run anywhere has the same id."""
    data = cfg.model_dump(mode="json")
    data["train"] = {k: v for k, v in data["train"].items() if k not in ENGINE_ONLY}
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]

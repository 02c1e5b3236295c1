"""The fully resolved configuration of one run (one cell of a suite)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from bench.config.overrides import merge_sections, normalize_sections
from bench.data.registry import DatasetConfig, dataset_spec, image_shape
from bench.data.views import ViewSpec, build_recipe
from bench.errors import ConfigError
from bench.eval.config import EvalConfig
from bench.methods import Method, MethodParams, method_class
from bench.models.backbones import VIT_NAMES, BackboneConfig
from bench.schema import ConfigModel, PathField
from bench.config.optim import OptimizerConfig
from bench.config.optim import ScheduleConfig


class TrainConfig(ConfigModel):
    """Engine settings: precision, checkpoints, monitors. They do not change what is learned."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    compile: bool = Field(False, description="torch.compile the backbone")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible CPU runs)")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm (see grad_clip_mode)")
    grad_clip_mode: Literal["global", "per_param"] = Field(
        "global", description="global: the norm of all gradients together; per_param: each parameter's own (DINO)")
    sync_bn: bool = Field(False, description="several processes per cell: batch norm over the global batch (SyncBN)")
    checkpoint_every: int = Field(1, ge=0, description="checkpoint every N epochs (0: only at the end and on SIGTERM)")
    knn_every: int = Field(0, ge=0, description="online kNN monitor on the validation split every K epochs (0: off)")
    knn_bank: int = Field(5000, ge=10, description="online kNN: a fixed class-balanced bank of about this many training samples")
    log_every: int = Field(20, ge=1, description="fetch metrics from the device every N steps")
    progress: bool = Field(True, description="rich progress bar when attached to a terminal")
    workers: int = Field(4, ge=0, description="DataLoader workers for streamed (image folder) datasets")
    cache_dir: PathField = Field(Path("results/cache"), description="per-dataset caches (e.g. MV-MR's representations)")


class RunConfig(ConfigModel):
    method: SerializeAsAny[MethodParams]
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    augment: str | list[ViewSpec] = Field(description="view recipe name or explicit list of views")
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    epochs: int = Field(100, ge=0, description="0: no training, the backbone is evaluated at its initialisation for the seed")
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

    @field_validator("epochs")
    @classmethod
    def _baselines_train_nothing(cls, v: int, info: ValidationInfo) -> int:
        method = info.data.get("method")
        if v and method is not None and method_class(method.name).baseline:
            raise ValueError(f"{method.name} is a baseline that learns nothing; set epochs: 0")
        return v


def resolve_run_config(data: dict[str, Any]) -> RunConfig:
    """Validate a (partial) run config, filling the method's paper defaults.

    The method section picks the hyper-parameter model; the method's preset (``method.preset``), then its
    optimizer, schedule and view recipe fill what the data leaves out, and any given field overrides them. A ViT
    backbone gets its image size from the first view, and every view must be a multiple of its patch size. Errors
    become one ConfigError naming the key of each.
    """
    data = normalize_sections(copy.deepcopy(data))
    method = data.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise ConfigError("method: missing; set it, e.g. method=simclr")
    cls = method_class(method["name"])
    data = _with_preset(cls, method.get("preset"), data)
    lines = []
    try:
        data["method"] = cls.Params.model_validate(data["method"])
    except ValidationError as err:
        lines = problem_lines(err, prefix="method")
        data["method"] = cls.Params.model_validate({"name": method["name"]})  # the paper's, to find the other problems too
    _check_branches(cls, data)
    optimizer = data.get("optimizer") or {}
    if not isinstance(optimizer, dict):
        raise ConfigError("optimizer: expected a section such as {name: lars, lr: 0.3}")
    data["optimizer"] = {**cls.optimizer, **optimizer}
    schedule = data.get("schedule") or {}
    if not isinstance(schedule, dict):
        raise ConfigError("schedule: expected a section such as {warmup_epochs: 10}")
    data["schedule"] = {**cls.schedule, **schedule}
    data.setdefault("augment", cls.recipe)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        lines += problem_lines(err)
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    if cls.needs_vit and not config.backbone.is_vit:
        raise ConfigError(f"backbone: {cls.name} works on the patches of a ViT, not {config.backbone.name}; set backbone.name "
                          f"to one of {', '.join(VIT_NAMES)} (and backbone.patch_size, e.g. 4 for 32 px images)")
    _fit_backbones(config)
    return config


def _with_preset(cls: type[Method], preset: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` merged over the sections of the method's preset ``preset`` (unchanged when None)."""
    if preset is None:
        return data
    if not isinstance(preset, str) or preset not in cls.presets:
        have = ", ".join(sorted(cls.presets)) or "none"
        raise ConfigError(f"method.preset: {cls.name} has no preset {preset!r} (its presets: {have}); drop method.preset")
    sections = cls.presets[preset]
    merged = merge_sections(normalize_sections(copy.deepcopy(sections)), data)
    backbone = merged.get("backbone")
    name = backbone.get("name", "the default small_cnn") if isinstance(backbone, dict) else backbone
    if "backbone" in sections and name not in VIT_NAMES:
        raise ConfigError(f"method.preset={preset}: {cls.name}'s {preset} recipe trains a ViT; set backbone.name to one of "
                          f"{', '.join(VIT_NAMES)} (got {name})")
    return merged


def _check_branches(cls: type[Method], data: dict[str, Any]) -> None:
    """Refuse branches that differ where the method needs shared weights; the first of two named branch backbones
    is the run's backbone."""
    params: MethodParams = data["method"]
    if params.branches == "shared":
        return
    if cls.shared_weights_reason:
        raise ConfigError(f"method.branches: {cls.name} needs both views through one encoder: {cls.shared_weights_reason}; "
                          "use method.branches=shared")
    if params.branches == "separate" or params.branches.first is None:
        return
    first = params.branches.first
    given = data.get("backbone")
    try:
        differs = given is not None and BackboneConfig.model_validate(given) != first
    except ValidationError:
        return  # the run's backbone section is invalid: RunConfig's validation names its problems
    if differs:
        raise ConfigError(f"method.branches.first: the first branch is the run's backbone, but backbone is {given} and "
                          f"branches.first is {first.model_dump(exclude_none=True)}; drop one of them or make them equal")
    data["backbone"] = first.model_dump(exclude_none=True)


def _fit_backbones(cfg: RunConfig) -> None:
    """Give each ViT (the backbone and a differing second branch) the first view's size as its image size, and
    check that every view and the evaluation images are patch multiples."""
    image = image_shape(cfg.dataset)[1]
    sizes = [view.crop_size(image) for view in build_recipe(cfg.augment)]
    second = cfg.method.second_backbone(cfg.backbone)
    branches = cfg.method.branches
    for backbone in [cfg.backbone] + ([branches.first, branches.second] if not isinstance(branches, str) else []):
        if backbone is not None and backbone.is_vit and backbone.image_size is None:
            backbone.image_size = sizes[0]
    for where, backbone in (("backbone", cfg.backbone), ("method.branches.second", second)):
        if backbone is not None:
            backbone.check_sizes([*sizes, image], f"augment (views of the {image} px {cfg.dataset.name} images; {where})")


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

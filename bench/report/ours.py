"""Our side of the paper column: the protocol record of one of our numbers (``protocol.ProtocolRecord``).

``cell_record(config, report, metric)`` derives it from what a cell recorded, and nothing else:

- ``config``: the cell's resolved run config as ``RunConfig.model_dump(mode="json")`` writes it (report.json's
  ``config``, MLflow's ``config.yaml``);
- ``report``: its ``report.json``, of which only ``selection`` is read (the choices made on the validation split,
  ``{"knn.k": 20, "linear.lr": 0.3, ...}``; a report without it predates the validation split, so its probes
  used fixed settings);
- ``metric``: the test metric the number is (``knn20.top1``, ``linear_1pct.top1``, ``cifar10.logreg.top1``).

Every field the config cannot tell is left None (shown as "unknown"). ``imagefolder`` is named by what its config
says it holds: ImageNet-100 with a ``classes_file``, Tiny ImageNet when its root's name says "tiny", else ImageNet.
Configs of older versions are read as far as they go: the reading of a method section that no longer validates
is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bench.data.folder import DEFAULT_IMAGE_SIZE
from bench.data.folder_crops import EVAL_CROP
from bench.data.views import build_recipe
from bench.errors import ConfigError
from bench.methods import method_class
from bench.report.metric_key import Family, MetricKey, Split, parse_metric
from bench.report.protocol import (
    Backbone,
    Labels,
    Pretrain,
    Probe,
    ProbeType,
    ProtocolRecord,
    Resolution,
    Selection,
    Variant,
)

#: the side of each registered dataset's images as stored (ImageFolder: the default crop side)
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "cifar20": 32, "stl10": 96, "mnist": 28, "fashion_mnist": 28, "digits": 32,
               "shapes": 32, "imagefolder": DEFAULT_IMAGE_SIZE}
#: the probe type of each metric family that published tables report
PROBE_TYPES = {Family.KNN: ProbeType.KNN, Family.LINEAR: ProbeType.LINEAR_CACHED, Family.LOGREG: ProbeType.LOGREG,
               Family.LINEAR_AUG: ProbeType.LINEAR_AUG, Family.FINETUNE: ProbeType.FINETUNE}
#: how each cached-feature probe feeds its features
PROBE_AUGMENTATION = {ProbeType.LINEAR_CACHED: "none", ProbeType.LOGREG: "none", ProbeType.LINEAR_AUG: "rrc_flip"}


def published_key(metric: str) -> MetricKey | None:
    """The parsed ``metric`` when published tables report its kind (a test-split kNN, probe or fine-tuning
    accuracy), else None."""
    key = parse_metric(metric)
    if key.split != Split.TEST or key.family not in PROBE_TYPES or not key.is_accuracy:
        return None
    return key


def cell_record(config: Mapping[str, Any], report: Mapping[str, Any], metric: str) -> ProtocolRecord:
    """The protocol record of ``metric`` of the cell that ran ``config`` and wrote ``report`` (module docstring)."""
    key = published_key(metric)
    if key is None:
        raise ConfigError(f"{metric} is no test accuracy of a kNN, probe or fine-tuning protocol: it has no protocol record")
    pretrain, evaluation = config["dataset"], _evaluated_set(config, key)
    size = _train_size(pretrain)
    sizes = [spec.crop_size(size) for spec in build_recipe(config["augment"])] if size else []
    eval_size, eval_resize = _eval_resolution(evaluation)
    validated = "selection" in report
    return ProtocolRecord(
        dataset=dataset_identity(evaluation),
        pretrain=Pretrain(dataset=dataset_identity(pretrain), split=pretrain.get("pretrain_split")),
        backbone=_backbone(config["backbone"]),
        epochs=config.get("epochs"),
        batch_size=config.get("batch_size"),
        views=_views(sizes),
        augmentation=config["augment"] if isinstance(config["augment"], str) else "custom",
        resolution=Resolution(pretrain=sizes[0] if sizes else None, eval=eval_size, eval_resize=eval_resize),
        probe=_probe(key, config.get("eval", {}), report.get("selection", {}), validated),
        labels=Labels(fraction=float(key.labels.rstrip("%")) / 100, subset="class_balanced") if key.labels else Labels(),
        selection=Selection.HELDOUT_VAL if validated else Selection.FIXED_A_PRIORI,
        reading=_reading(config["method"]),
    )


def dataset_identity(dataset: Mapping[str, Any]) -> str:
    """A dataset section's name as published tables name the set (``imagefolder`` -> imagenet, imagenet100, ...)."""
    name = dataset["name"]
    if name != "imagefolder":
        return name
    if dataset.get("classes_file"):
        return "imagenet100"
    return "tiny_imagenet" if "tiny" in str(dataset.get("root") or "").lower() else "imagenet"


def _evaluated_set(config: Mapping[str, Any], key: MetricKey) -> Mapping[str, Any]:
    """The dataset section the metric was measured on: one of ``eval.datasets``, or the pre-training set."""
    if key.dataset is None:
        return config["dataset"]
    extra = [d for d in config.get("eval", {}).get("datasets", []) if d["name"] == key.dataset]
    return extra[0] if extra else {"name": key.dataset}


def _train_size(dataset: Mapping[str, Any]) -> int | None:
    """The side of the images the pre-training views are cut from."""
    return dataset.get("image_size") or NATIVE_SIZE.get(dataset["name"])


def _eval_resolution(dataset: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The side of the test images and how they were made from the stored ones."""
    name, size = dataset["name"], dataset.get("image_size")
    if name == "imagefolder":
        side = size or DEFAULT_IMAGE_SIZE
        if dataset_identity(dataset) == "tiny_imagenet":  # evaluated whole, resized
            return side, "none" if side == 64 else f"resize{side}"
        return side, f"resize{round(side / EVAL_CROP)}_center{side}"
    native = NATIVE_SIZE.get(name)
    if native is None:
        return size, None
    return (native, "none") if size in (None, native) else (size, f"resize{size}")


def _backbone(backbone: Mapping[str, Any]) -> Backbone:
    name = backbone.get("name")
    if not str(name).startswith("resnet"):
        return Backbone(name=name)
    return Backbone(name=name, variant=Variant.CIFAR_STEM if backbone.get("cifar_stem") else Variant.IMAGENET_STEM)


def _views(sizes: list[int]) -> str | None:
    """``[224, 224, 96, ...]`` -> ``2x224+6x96``."""
    groups: list[list[int]] = []
    for size in sizes:
        if groups and groups[-1][1] == size:
            groups[-1][0] += 1
        else:
            groups.append([1, size])
    return "+".join(f"{count}x{size}" for count, size in groups) or None


def _probe(key: MetricKey, evaluation: Mapping[str, Any], selection: Mapping[str, Any], validated: bool) -> Probe:
    """The probe of ``key`` as the config set it and the selection chose it."""
    kind = PROBE_TYPES[key.family]
    prefix = f"{key.dataset}." if key.dataset else ""
    if kind == ProbeType.KNN:
        return Probe(type=kind, k=key.k or selection.get(f"{prefix}knn.k"), t=selection.get(f"{prefix}knn.t", evaluation.get("knn_temperature")),
                     fit_on="train+val" if validated else "train")
    if kind == ProbeType.FINETUNE:
        settings = evaluation.get("finetune") or {}
        return Probe(type=kind, epochs=settings.get("epochs"), batch_size=settings.get("batch_size"), fit_on="train")
    settings = _probe_settings(evaluation, key.family.value)
    chosen = selection.get(f"{prefix}{key.protocol}.lr")
    refits = kind == ProbeType.LOGREG or settings.get("refit", False)
    return Probe(
        type=kind,
        epochs=settings.get("epochs"),
        optimizer="lbfgs" if kind == ProbeType.LOGREG else settings.get("optimizer"),
        lr=chosen if chosen is not None else "grid" if "lrs" in settings else settings.get("lr"),
        batch_size=settings.get("batch_size"),
        augmentation=PROBE_AUGMENTATION[kind],
        bn_on_features=settings.get("standardize", settings.get("batch_norm")),
        fit_on="train+val" if refits and validated and not key.labels else "train",
    )


def _probe_settings(evaluation: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """The config of the probe ``name``: its entry of ``eval.probes``, or (older configs) ``eval.linear``."""
    for probe in evaluation.get("probes") or []:
        if probe.get("name") == name:
            return probe
    return (evaluation.get("linear") or {}) if name == "linear" else {}


def _reading(method: Mapping[str, Any]) -> str | None:
    """The method's reading in effect (``MethodParams.reading_in_effect``); None when its section does not validate."""
    try:
        return method_class(method["name"]).Params.model_validate(method).reading_in_effect()
    except (ConfigError, ValidationError):
        return None


def has_code_reading(method: str) -> bool:
    """Whether the method's official code reads its paper differently somewhere (its ``code_reading``)."""
    try:
        return bool(method_class(method).Params.code_reading)
    except ConfigError:  # a method ssl-bench lacks (a published baseline)
        return False

"""Every method class, dataset spec and representation a module under bench/ defines is in its registry's table, so a new
file cannot be forgotten; the backbone, probe and launcher names are read from their one table; an unknown method or
dataset is a ConfigError that lists the choices."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import get_args

import pytest

from bench.data.registry import DATASETS, dataset_spec
from bench.data.spec import DatasetSpec
from bench.errors import ConfigError
from bench.eval.linear import LinearConfig
from bench.eval.linear_aug import LinearAugConfig
from bench.eval.logreg import LogRegConfig
from bench.eval.probes import PROBE_NAMES, PROBES, ProbeConfig
from bench.methods.base import Method
from bench.methods.mvmr import RepName
from bench.methods.registry import METHODS, all_methods, baseline_methods, method_class
from bench.models.backbones import BACKBONES, CONVNEXT_NAMES, RESNET_NAMES, VIT_NAMES, BackboneConfig
from bench.representations import AUGMENTED, REPRESENTATIONS
from bench.representations.features import AugmentedParams, RepParams
from bench.orchestrate.launch import LAUNCH
from bench.suite.infra import Launcher, LauncherConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _defined(room: str, keep) -> dict[str, list[object]]:
    """Module -> the public module-level objects of bench/<room>/*.py that ``keep`` selects, defined in that module."""
    found = {}
    for path in sorted((BENCH / room).glob("*.py")):
        module = importlib.import_module(f"bench.{room}.{path.stem}")
        objects = [obj for name, obj in vars(module).items() if not name.startswith("_") and keep(obj, module)]
        if objects:
            found[module.__name__] = objects
    return found


def test_every_method_class_is_registered():
    classes = _defined("methods", lambda obj, module: inspect.isclass(obj) and issubclass(obj, Method) and obj is not Method
                       and obj.__module__ == module.__name__)
    missing = [f"{module}.{cls.__name__}" for module, found in classes.items() for cls in found if cls not in METHODS.values()]
    assert missing == [], "add these to METHODS in bench/methods/registry.py"
    assert sum(map(len, classes.values())) == len(METHODS) == 19
    assert all(METHODS[cls.name] is cls for cls in METHODS.values())
    assert set(all_methods()) | set(baseline_methods()) == set(METHODS)
    assert sorted(baseline_methods()) == ["random_init", "raw_pixels"]


def test_every_dataset_spec_is_registered():
    specs = _defined("data", lambda obj, module: isinstance(obj, DatasetSpec))
    missing = [f"{module}: {spec.name}" for module, found in specs.items() for spec in found if spec not in DATASETS.values()]
    assert missing == [], "add these to DATASETS in bench/data/registry.py"
    assert sorted(DATASETS) == ["cifar10", "cifar100", "cifar20", "digits", "fashion_mnist", "imagefolder", "mnist", "shapes",
                                "stl10"]
    assert all(DATASETS[spec.name] is spec for spec in DATASETS.values())


def test_every_representation_is_registered():
    params = _defined("representations", lambda obj, module: inspect.isclass(obj) and issubclass(obj, RepParams)
                      and obj.__module__ == module.__name__ and obj not in (RepParams, AugmentedParams))
    registered = {rep.Params for rep in REPRESENTATIONS.values()}
    missing = [f"{module}.{cls.__name__}" for module, found in params.items() for cls in found if cls not in registered]
    assert missing == [], "add these to REPRESENTATIONS in bench/representations/registry.py"
    assert set(get_args(RepName)) == {*REPRESENTATIONS, AUGMENTED}
    assert all(REPRESENTATIONS[rep.name] is rep for rep in REPRESENTATIONS.values())


def test_backbone_probe_and_launcher_names_come_from_one_table():
    families = [RESNET_NAMES, ("small_cnn",), VIT_NAMES, CONVNEXT_NAMES]  # build_backbone's families
    assert [name for family in families for name in family] == list(BACKBONES)
    assert BackboneConfig.model_json_schema()["properties"]["name"]["enum"] == list(BACKBONES)
    assert list(PROBES) == [LogRegConfig, LinearConfig, LinearAugConfig]
    assert PROBE_NAMES == ("logreg", "linear", "linear_aug")
    assert get_args(get_args(ProbeConfig)[0]) == (LogRegConfig, LinearConfig, LinearAugConfig)
    assert LauncherConfig.model_json_schema()["$defs"]["Launcher"]["enum"] == list(Launcher) == ["local", "slurm", "print"]
    assert list(LAUNCH) == list(Launcher)  # each launcher is started in one place


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match=r"unknown method 'simclrr'; choose one of: barlow_twins, byol, .*wmse$"):
        method_class("simclrr")
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar'; choose one of: cifar10, cifar100, cifar20, digits, "):
        dataset_spec("cifar")

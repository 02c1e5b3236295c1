"""Run-config resolution, --set overrides, config identity, optimizer and schedule."""

import math

import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.config.run import config_id
from bench.errors import ConfigError
from bench.methods import method_class
from bench.train.optim import LARS, build_optimizer, param_groups
from bench.config.optim import OptimizerConfig
from bench.train.schedule import lr_factor
from bench.config.optim import ScheduleConfig


def test_method_defaults_fill_optimizer_and_recipe():
    cfg = resolve_run_config({"method": "byol"})
    cls = method_class("byol")
    assert cfg.method.tau_base == 0.996
    assert cfg.optimizer.name == cls.optimizer["name"] and cfg.optimizer.lr == cls.optimizer["lr"]
    assert cfg.augment == "byol"


def test_overrides_merge_onto_method_defaults():
    data = apply_overrides({}, ["method=simclr", "method.temperature=0.5", "optimizer.lr=0.01", "dataset.n_train=100", "epochs=3"])
    cfg = resolve_run_config(data)
    assert cfg.method.temperature == 0.5
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.name == "lars"  # the rest stays the method's
    assert cfg.dataset.n_train == 100 and cfg.epochs == 3


def test_switching_method_drops_previous_hyper_parameters():
    data = apply_overrides({"method": {"name": "simclr", "temperature": 0.5}}, ["method=vicreg"])
    assert resolve_run_config(data).method.name == "vicreg"


@pytest.mark.parametrize(
    "sets, fragment",
    [
        (["method=simclr", "epochz=3"], "epochz: unknown key"),
        (["method=simclr", "method.temprature=0.5"], "method.temprature: unknown key"),
        (["method=simclr", "optimizer.name=rmsprop"], "optimizer.name"),
        (["method=simclr", "batch_size=abc"], "batch_size"),
        (["method=nope"], "unknown method 'nope'"),
        (["method=simclr", "dataset=imagenet21k"], "unknown dataset 'imagenet21k'"),
        (["method=simclr", "epochs=3=4"], "epochs"),
    ],
)
def test_bad_configs_name_the_key(sets, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_run_config(apply_overrides({}, sets))
    assert fragment in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"epochs": 3}, ["epochs.x=1"])


def test_config_id_ignores_engine_only_settings():
    base = resolve_run_config({"method": "simclr"})
    same = resolve_run_config({"method": "simclr", "train": {"threads": 1, "progress": False}})
    other = resolve_run_config({"method": "simclr", "epochs": 7})
    assert config_id(base) == config_id(same) != config_id(other)
    assert config_id(resolve_run_config(base.model_dump(mode="json"))) == config_id(base)  # round trip


def test_warmup_cosine_schedule():
    cfg = ScheduleConfig(warmup_epochs=2, warmup_start=0.0, final_lr=0.1)
    total, per_epoch = 100, 10
    factors = [lr_factor(cfg, s, total, per_epoch) for s in range(total)]
    assert factors[0] == 0.0 and factors[10] == pytest.approx(0.5)
    assert factors[20] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    mid = 20 + (total - 20 - 1) / 2
    assert lr_factor(cfg, int(mid), total, per_epoch) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(mid - 20) / 79)))
    assert all(a <= b for a, b in zip(factors[:20], factors[1:21]))
    assert all(a >= b for a, b in zip(factors[20:], factors[21:]))


def test_lr_scaling_rules():
    assert OptimizerConfig(lr=0.3, lr_scaling="linear").scaled_lr(4096) == pytest.approx(4.8)
    assert OptimizerConfig(lr=0.3, lr_scaling="sqrt").scaled_lr(1024) == pytest.approx(0.6)
    assert OptimizerConfig(lr=0.3).scaled_lr(1024) == 0.3


def test_bias_and_norm_parameters_skip_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = param_groups(model, OptimizerConfig(weight_decay=0.1))
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, OptimizerConfig(weight_decay=0.1, exclude_bias_bn=False))) == 1


def test_lars_step_matches_its_formula():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": 0.5}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
               lr=0.1, momentum=0.9, eta=0.01)
    w.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([2.0])
    opt.step()
    d = torch.tensor([1.0, 0.0]) + 0.5 * torch.tensor([3.0, 4.0])  # gradient + weight decay
    trust = 0.01 * 5.0 / d.norm()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * trust * d)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))


def test_build_optimizer_kinds():
    model = torch.nn.Linear(2, 2)
    for name, kind in [("sgd", torch.optim.SGD), ("lars", LARS), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]:
        opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.1, lr_scaling="linear"), batch_size=512)
        assert isinstance(opt, kind) and opt.param_groups[0]["lr"] == pytest.approx(0.2)

"""The validation split: held out once for every dataset, read by every selection; the test split read once, last."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.eval.config import EvalConfig
from bench.config.search import SearchConfig
from bench.suite.suite import suite_from_yaml
from bench.data.balanced import hold_out
from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.registry import DatasetSplits, ValConfig, load_dataset, read_dataset, with_val
from bench.errors import ConfigError
from bench.eval.features import Features, extract_features
from bench.eval.protocols import score_on_test, select_on_val
from bench.orchestrate.search import objective_value, report_epoch
from bench.report.ours import published_key
from bench.train.engine import monitor_bank, train

CPU = torch.device("cpu")


# --- the hold-out --------------------------------------------------------------------------------------------------


def test_hold_out_quota_per_class():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([10, 25, 1, 2, 100])] + [torch.full((4,), -1)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
    kept, held = hold_out(labels, fraction=0.1, per_class=None, seed=0)
    # min(max(1, round_half_up(0.1 n_c)), n_c - 1): 10 -> 1, 25 -> 2.5 -> 3, 1 -> 0 (stays in train), 2 -> 1, 100 -> 10
    assert torch.bincount(labels[held], minlength=5).tolist() == [1, 3, 0, 1, 10]
    assert sorted(kept.tolist() + held.tolist()) == list(range(labels.numel()))  # disjoint, nothing lost
    assert (labels[kept] == -1).sum() == 4  # unlabelled samples stay in train, never in val
    _, by_count = hold_out(labels, fraction=0.1, per_class=5, seed=0)
    assert torch.bincount(labels[by_count], minlength=5).tolist() == [5, 5, 0, 1, 5]  # min(5, n_c - 1)
    assert torch.equal(hold_out(labels, fraction=0.1, per_class=None, seed=0)[1], held)
    assert not torch.equal(hold_out(labels, fraction=0.1, per_class=None, seed=1)[1], held)


def test_cifar_shaped_labels_split_45000_5000_exactly():
    labels = torch.arange(50_000) % 10
    kept, held = hold_out(labels, fraction=0.1, per_class=None, seed=0)
    assert (kept.numel(), held.numel()) == (45_000, 5_000)
    assert torch.bincount(labels[held]).tolist() == [500] * 10


def test_every_dataset_gets_the_same_val_split_whatever_the_cell_seed():
    base = {"method": "simclr", "dataset": {"name": "shapes", "n_train": 200, "n_test": 10}}
    a, b = (resolve_run_config({**base, "seed": seed}) for seed in (0, 1))
    first, second = load_dataset(a.dataset), load_dataset(b.dataset)
    assert torch.equal(first.val.images, second.val.images)
    raw = read_dataset(a.dataset)
    assert (len(first.train), len(first.val)) == (180, 20) and len(first.pretrain) == len(raw.train) == 200
    train_images = {bytes(i.numpy()) for i in first.train.images}
    assert not any(bytes(i.numpy()) in train_images for i in first.val.images)  # disjoint
    reseeded = with_val(raw, ValConfig(seed=3))
    assert not torch.equal(reseeded.val.images, first.val.images)
    strict = with_val(raw, ValConfig(in_pretrain=False))
    assert torch.equal(strict.pretrain.images, strict.train.images) and len(strict.pretrain) == 180


def test_an_imagenet_sized_folder_holds_out_ten_per_class_and_an_official_val_is_kept():
    labels = torch.arange(1000).repeat_interleave(11)
    files = [Path(f"{i}.JPEG") for i in range(labels.numel())]  # never read
    folder = FolderSet("imagefolder", files, labels, [f"n{c:08d}" for c in range(1000)])
    splits = with_val(DatasetSplits(pretrain=folder, train=folder, test=folder), ValConfig())
    assert len(splits.val) == 10_000 and torch.bincount(splits.val.labels).tolist() == [10] * 1000
    assert set(splits.val.files).isdisjoint(splits.train.files) and len(splits.train) == 1_000
    official = DatasetSplits(pretrain=folder, train=folder, test=folder, val=folder.subset(torch.arange(5)))
    assert with_val(official, ValConfig()) is official


def test_the_monitor_bank_is_class_balanced_on_a_class_sorted_set():
    labels = torch.arange(4).repeat_interleave(50)  # sorted by class: the first 20 samples are all class 0
    split = ImageSet("sorted", torch.zeros(200, 3, 4, 4, dtype=torch.uint8), labels, list("abcd"), (0.5,) * 3, (0.2,) * 3)
    assert torch.bincount(monitor_bank(split, 20).labels).tolist() == [5, 5, 5, 5]
    assert monitor_bank(split, 500) is split


# --- nothing before the final evaluation reads the test split ------------------------------------------------------


class Tripwire(ImageSet):
    """A test split that raises on any read of its images, labels or size while ``armed``."""

    armed = False

    def __getattribute__(self, name: str):
        if name in ("images", "labels", "subset", "to", "labeled") and object.__getattribute__(self, "armed"):
            raise AssertionError(f"the test split was read ({name}) before the final evaluation")
        return object.__getattribute__(self, name)

    def __len__(self) -> int:
        if self.armed:
            raise AssertionError("the test split was read (len) before the final evaluation")
        return super().__len__()


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory):
    """Two epochs of SimCLR with the online kNN monitor and an Optuna median pruner, the test split a tripwire;
    then every choice of every probe (and label fraction) on val, the tripwire still armed."""
    cfg = resolve_run_config(apply_overrides({}, [
        "method=simclr", "method.projector=16-8", "dataset={name: shapes, n_train: 200, n_test: 40}",
        "backbone={name: small_cnn, width: 4}", "batch_size=50", "epochs=2", "train.knn_every=1", "train.progress=false",
        "train.checkpoint_every=0", "eval.probes=[logreg, {name: linear, epochs: 2}, {name: linear_aug, epochs: 1}]",
        "eval.label_fractions=[0.5]", "eval.knn_k=[5, 20]"]))
    splits = load_dataset(cfg.dataset)
    test = splits.test
    tripwire = Tripwire(test.name, test.images, test.labels, test.classes, test.mean, test.std)
    tripwire.armed = True
    splits = DatasetSplits(pretrain=splits.pretrain, train=splits.train, test=tripwire, val=splits.val)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=0))
    trial = study.ask()
    result = train(cfg, tmp_path_factory.mktemp("guarded"), splits=splits, on_epoch=lambda record: report_epoch(trial, record))
    selected = select_on_val(result.method.backbone, splits, cfg.eval, CPU, cfg.seed)
    return cfg, result, trial, selected, tripwire


def test_the_monitor_and_the_pruner_read_val_only(guarded_run):
    cfg, result, trial, _, _ = guarded_run
    monitored = [h.monitor.knn20_top1 for h in result.history]
    assert len(monitored) == 2 and all(0 <= v <= 1 for v in monitored)
    reported = trial.study.trials[0].intermediate_values
    assert reported == {1: monitored[0], 2: monitored[1]}  # what the pruner saw: the validation monitor
    label_free = SearchConfig(space={"optimizer.lr": {"type": "float", "low": 0.1, "high": 1}}, metric="val.rankme")
    rankme = trial.study.ask()
    for record in result.history:
        report_epoch(rankme, record, label_free)
    assert rankme.study.trials[1].intermediate_values == {1: result.history[0].monitor.rankme,
                                                          2: result.history[1].monitor.rankme}


def test_every_probe_chooses_on_val_before_the_test_split_is_read_once(guarded_run):
    cfg, result, _, selected, tripwire = guarded_run
    for key in ("knn.k", "logreg.C", "linear.lr", "linear.wd", "linear_aug.lr", "logreg_50pct.C", "linear_50pct.lr",
                "linear_aug_50pct.lr"):
        assert key in selected.selection, key
    assert {"val.knn20.top1", "val.logreg.top1", "val.linear.top1", "val.linear_aug.top1"} <= set(selected.val_metrics)
    with pytest.raises(AssertionError, match="before the final evaluation"):
        extract_features(result.method.backbone, tripwire, CPU)  # the tripwire is live
    tripwire.armed = False  # the final evaluation
    metrics = score_on_test(selected, Features(*extract_features(result.method.backbone, tripwire, CPU)), cfg.eval)
    assert {"knn20.top1", "knn.top1", "logreg.top1", "linear.top1", "linear_aug.top1", "linear_50pct.top1"} <= set(metrics)
    assert selected.test_reads == 1


class ValOnly(dict):
    """Metrics whose test numbers raise when read."""

    def __getitem__(self, key: str) -> float:
        if not key.startswith("val."):
            raise AssertionError(f"the objective read the test metric {key}")
        return super().__getitem__(key)

    get = lambda self, key, default=None: self[key] if key in self else default  # noqa: E731


def test_the_search_objective_reads_val_and_refuses_a_test_metric(guarded_run):
    _, _, _, selected, _ = guarded_run
    metrics = ValOnly({**selected.val_metrics, "knn20.top1": 0.9})
    assert objective_value(metrics, None) == selected.val_metrics["val.knn20.top1"]
    search = "name: s\ndefaults: {method: simclr}\nsearch: {space: {optimizer.lr: {type: float, low: 0.1, high: 1}}, pruner: none, metric: %s}"
    assert suite_from_yaml(search % "val.linear.top1").search.metric == "val.linear.top1"
    with pytest.raises(ConfigError, match=r"search\.metric: .*test-split metric.*val\.knn20\.top1"):
        suite_from_yaml(search % "knn20.top1")


# --- names ---------------------------------------------------------------------------------------------------------


def test_val_metrics_are_no_dataset_and_val_is_no_dataset_name():
    assert published_key("val.linear.top1") is None and published_key("val.cifar10.knn20.top1") is None
    assert published_key("cifar10.linear.top1").dataset == "cifar10"
    with pytest.raises(ValueError, match="'val' would read as the validation split"):
        EvalConfig(datasets=[{"name": "val"}])
    with pytest.raises(ConfigError, match="eval: .*'linear' was replaced by 'probes'"):
        resolve_run_config({"method": "simclr", "eval": {"linear": {"epochs": 5}}})

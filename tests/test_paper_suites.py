"""The seed papers' experiments as suites (suites/<paper>_*.yaml, baselines_*, detection_coco).

Each suite validates and expands to exactly its paper's grid plus its baseline cells (random init per dataset,
backbone, evaluations and seed; raw pixels per dataset and evaluations); the cells the papers share (each ablation
table's anchor, the baselines) are one cell across suites; every suite runs at smoke scale through ``ssl-bench run`` and ``ssl-bench
worker`` with ``--set`` overrides; and ``eval.datasets`` evaluates a backbone on a second labeled set (SidAE's
STL-10 -> CIFAR-10 transfer).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
from optuna.trial import TrialState

from bench.cli import main
from bench.config.run import resolve_run_config
from bench.eval.config import EvalConfig
from bench.suite.suite import Cell, expand_suite, load_suite, stage_cells
from bench.data.registry import DatasetConfig, load_dataset
from bench.errors import ConfigError, DataError
from bench.eval.features import extract_features
from bench.eval.knn import knn_eval
from bench.eval.protocols import evaluate_backbone
from bench.methods import all_methods
from bench.methods.baselines import Baseline
from bench.models.backbones import BackboneConfig, build_backbone
from bench.runner import run

SUITES = Path(__file__).resolve().parents[1] / "suites"
METHODS = 16  # every registered method that trains any backbone (bench/methods), the supervised baseline and the DAE included
ALL_METHODS = 17  # and MAE, which needs a ViT

#: suite -> cells of its paper's grid (pre-training cells, plus one detection cell per source where there is one); its
#: baseline cells come on top (``_grid`` leaves them out)
PAPER_CELLS = {
    "mvmr_loss_terms": 7,  # Table 6: non-empty subsets of {L1, L2, L3}, 2^3 - 1
    "mvmr_representations": 31,  # Table A1: non-empty subsets of 5 representations, 2^5 - 1
    "mvmr_augmentations": 5,  # Table A2: the 5 cumulative prefixes of crop, flip, colour, grey, blur
    "mvmr_projector": 19,  # Table A3: depth {1, 2, 3} x width {256, ..., 8192} (3 x 6) + no projector
    "mvmr_main": 2,  # Tables 2 and 3: STL-10 and CIFAR-20
    "mvmr_distillation": 3,  # Table 5: the student on STL-10, CIFAR-100 and ImageNet-1K
    "sidae_main": 45,  # Table 1: {SidAE, SimSiam, DAE} x {CIFAR-10, F-MNIST, MNIST} x 5 runs (1 % and 100 % in one cell)
    "sidae_w_sweep": 15,  # Fig. 4: w in {0.125, 0.25, 0.5} x 5 runs
    "sidae_transfer": 15,  # Table 1 STL-10 rows, Fig. 7: {SidAE, SimSiam, DAE} x 5 runs (STL-10 and CIFAR-10 in one cell)
    "mveb_beta": 5,  # Fig. 4: beta in {0.001, 0.003, 0.01, 0.03, 0.1}
    "mveb_batch_size": 23,  # Table 6: {SimCLR, SimSiam, VICReg, MVEB} x 6 batch sizes, minus SimCLR at 128
    "mveb_target": 2,  # section 7.2: weight-sharing vs momentum target
    "corinfomax_alpha": 5,  # Table 5.4: alpha in {125, 250, 500, 1000, 2000}
    "corinfomax_batch_size": 3,  # Table 5.5: batch in {256, 512, 1024}
    "corinfomax_lr": 3,  # Table 5.6: lr in {0.25, 0.5, 1.0}
    "corinfomax_projector": 3,  # Table 5.7: output dim in {64, 128, 256}
    "corinfomax_main": 2,  # Table 5.1: CIFAR-10 and CIFAR-100
    "baselines_cifar10": METHODS,  # every method once
    "baselines_cifar100": METHODS,
    "baselines_stl10": METHODS,
    "baselines_cifar10_vit": ALL_METHODS,  # every method once on ViT-Tiny/4
    "mveb_vit": 12,  # Table 7: 7 methods x {ResNet-50, ViT-S} - the 2 empty cells (DINO and MAE on ResNet-50)
    "vicreg_branches": 13,  # Table 5: 4 methods x {SW, DW, DA R50/R101, DA R50/ViT-S} - BYOL's 3 failure marks
    "detection_coco": 2 * METHODS,  # every method: its ImageNet-100 pre-training cell and its COCO detection cell
}

#: a ViT of one 16-d block (patch 2: MVEB Table 7's DINO cell keeps its 14 px local crops)
TINY_VIT = "backbone={name: vit, embed_dim: 16, depth: 1, num_heads: 2, patch_size: 2}"
TINY_DECODER = ["method.decoder_dim=16", "method.decoder_heads=2", "method.decoder_depth=1"]
TEACHER = "{teacher}"  # the path of the smoke teacher's weights, filled in by the test
TINY_HEAD = "method.projector=16-16"
BLURRED_VIEW = "{scale: [0.2, 1.0], jitter: [0.4, 0.4, 0.4, 0.1], blur_p: 0.5, blur_kernel: 3}"
TINY_DETECTOR = ("{detector: faster_rcnn, iterations: 2, batch_size: 2, warmup_iterations: 1, min_sizes: [64], max_size: 64, "
                 "test_size: 64, anchor_sizes: [8, 16, 32, 64, 128], fpn_channels: 8, proposals: 20, rpn_batch_size: 16, "
                 "roi_batch_size: 16, progress: false}")
#: suite -> its --set overrides beyond the common ones. Heads whose width is a paper's axis stay full width only where
#: that is cheap (CorInfoMax's 4096-wide); a method's predictor fixes the width a smoke projector must end at (2048 for
#: SimSiam, SidAE); the baselines name MV-MR in their defaults' method section, so a projector override reaches only it.
SMOKE = {
    "mvmr_loss_terms": [TINY_HEAD],
    "mvmr_representations": [TINY_HEAD],
    "mvmr_augmentations": [TINY_HEAD],
    "mvmr_projector": [TINY_HEAD],  # collapses the axis: its 8192-wide heads are too slow for a CPU smoke run
    "mvmr_main": [TINY_HEAD],
    "mvmr_distillation": [TINY_HEAD, f"method.teacher={{source: torchvision, arch: resnet18, path: {TEACHER}, input_size: 32}}"],
    "sidae_main": ["seeds=[0]", "method.projector=16-2048", f"augment=[{BLURRED_VIEW}, {BLURRED_VIEW}]"],
    "sidae_w_sweep": ["seeds=[0]", "method.projector=16-2048"],
    "sidae_transfer": ["seeds=[0]", "method.projector=16-2048", "evaluations.datasets=[{name: shapes, n_train: 64, n_test: 64, seed: 1}]"],
    "mveb_beta": ["method.projector=16-16-16"],
    "mveb_batch_size": ["method.projector=16-2048"],
    "mveb_target": ["method.projector=16-16-16"],
    "corinfomax_alpha": ["method.projector=16-16-8"],
    "corinfomax_batch_size": ["method.projector=16-16-8"],
    "corinfomax_lr": ["method.projector=16-16-8"],
    "corinfomax_projector": [],  # its 4096-wide heads are cheap enough to keep the axis
    "corinfomax_main": ["method.projector=16-16-8"],
    # W-MSE whitens slices of 128 images: one batch of 128
    "baselines_cifar10": ["batch_size=128", "dataset.n_train=128", TINY_HEAD],
    "baselines_cifar100": ["batch_size=128", "dataset.n_train=128", TINY_HEAD],
    "baselines_stl10": ["batch_size=128", "dataset.n_train=128", TINY_HEAD],
    "baselines_cifar10_vit": ["batch_size=128", "dataset.n_train=128", TINY_HEAD, TINY_VIT.replace("patch_size: 2", "patch_size: 8")],
    # MVEB Table 7 names MAE in its defaults' method section: the decoder override reaches only it
    "mveb_vit": [TINY_VIT, *TINY_DECODER],
    "vicreg_branches": ["method.projector=16-256"],  # BYOL's predictor ends at 256; the DA branches keep their backbones
    # the detector needs a torchvision ResNet; the generated COCO-format shapes replace COCO; the probes, smoke-tested by
    # every other suite, are left out of these 16 ResNet cells
    "detection_coco": ["batch_size=128", "dataset.n_train=128", TINY_HEAD, "backbone=resnet18", "evaluations.probes=[]",
                       "evaluations.detection.coco=null",
                       "evaluations.detection.synthetic={n_train: 4, n_val: 2, image_size: 64}",
                       f"evaluations.detection.detector={TINY_DETECTOR}"],
}


def _path(name: str) -> Path:
    return SUITES / f"{name}.yaml"


def _cells(name: str, sets: Sequence[str] = ()) -> list[Cell]:
    """Every cell of a suite: its pre-training cells and their detection cells."""
    suite = load_suite(_path(name), sets)
    cells = expand_suite(suite)
    return cells + stage_cells(suite, cells)


def _grid(cells: list[Cell]) -> list[Cell]:
    """The cells of the paper's grid: every cell but the baselines'."""
    return [cell for cell in cells if cell.config.method.name not in set(Baseline)]


def test_every_paper_suite_has_its_grid_and_smoke_settings():
    assert {p.stem for p in SUITES.glob("*.yaml")} - {"quickstart", "smoke"} == set(PAPER_CELLS) == set(SMOKE)


@pytest.mark.parametrize("name", sorted(PAPER_CELLS))
def test_suite_expands_to_its_paper_grid(name):
    cells = _cells(name)
    grid = _grid(cells)
    assert len(grid) == PAPER_CELLS[name]
    assert len({cell.id for cell in cells}) == len(cells)
    assert "Published numbers" in load_suite(_path(name)).description
    assert load_suite(_path(name)).baselines == [Baseline.RANDOM_INIT, Baseline.RAW_PIXELS]
    by_method = {b: [c.config for c in cells if c.config.method.name == b] for b in Baseline}
    assert by_method[Baseline.RANDOM_INIT] and all(c.epochs == 0 for c in by_method[Baseline.RANDOM_INIT])

    def keys(configs, *sections):
        return sorted({json.dumps([c.model_dump(mode="json")[s] for s in sections]) for c in configs})
    random_init = ("dataset", "backbone", "eval", "seed")  # a random-init cell per these of the grid, a raw-pixel one per fewer
    assert keys(by_method[Baseline.RANDOM_INIT], *random_init) == keys([c.config for c in grid], *random_init)
    assert len(by_method[Baseline.RANDOM_INIT]) == len(keys(by_method[Baseline.RANDOM_INIT], *random_init))
    assert keys(by_method[Baseline.RAW_PIXELS], "dataset", "eval") == keys([c.config for c in grid], "dataset", "eval")
    assert len(by_method[Baseline.RAW_PIXELS]) == len(keys(by_method[Baseline.RAW_PIXELS], "dataset", "eval"))


@pytest.mark.parametrize("name", ["baselines_cifar10", "baselines_cifar100", "baselines_stl10", "detection_coco", "baselines_cifar10_vit"])
def test_baselines_and_detection_cover_every_registered_method(name):
    cells = _grid(expand_suite(load_suite(_path(name))))
    assert len(all_methods()) == ALL_METHODS
    any_backbone = [m for m, cls in all_methods().items() if not cls.needs_vit]
    assert len(any_backbone) == METHODS
    assert sorted(cell.config.method.name for cell in cells) == sorted(all_methods() if name.endswith("_vit") else any_backbone)


def _shared(names: list[str]) -> list[Cell]:
    """The cells of the papers' grids that every one of the suites ``names`` holds."""
    by_suite = [{cell.id: cell for cell in _grid(expand_suite(load_suite(_path(name))))} for name in names]
    return [cell for cell_id, cell in by_suite[0].items() if all(cell_id in cells for cells in by_suite[1:])]


@pytest.mark.parametrize("names, shared", [
    (["mvmr_loss_terms", "mvmr_representations", "mvmr_augmentations", "mvmr_projector"], 1),  # the 69.38 anchor
    (["corinfomax_alpha", "corinfomax_batch_size", "corinfomax_lr", "corinfomax_projector", "corinfomax_main"], 1),
    (["mveb_target", "mveb_beta"], 1),  # momentum target, beta 0.01
    (["mveb_target", "mveb_batch_size"], 1),  # weight-sharing MVEB at batch 1024
    (["sidae_main", "sidae_w_sweep"], 5),  # SidAE w = 0.5 on CIFAR-10, 5 runs
])
def test_tables_of_one_paper_share_their_anchor_cells(names, shared):
    assert len(_shared(names)) == shared


@pytest.mark.parametrize("names, shared", [
    (["corinfomax_alpha", "corinfomax_lr", "corinfomax_main"], 2),  # CIFAR-100, ResNet-18, seed 0: random init, raw pixels
    (["sidae_main", "sidae_w_sweep"], 6),  # CIFAR-10, ResNet-18: random init for 5 seeds, raw pixels
])
def test_suites_that_evaluate_alike_share_their_baseline_cells(names, shared):
    by_suite = [{c.id for c in expand_suite(load_suite(_path(name))) if c.config.method.name in set(Baseline)} for name in names]
    assert len(set.intersection(*by_suite)) == shared


def test_anchor_cells_hold_the_papers_best_settings():
    (mvmr,) = _shared(["mvmr_loss_terms", "mvmr_representations", "mvmr_augmentations", "mvmr_projector"])
    m = mvmr.config.method
    assert (m.projector, m.terms, m.representations) == ("8192-8192-8192", ["l1", "l2", "l3"], ["raw", "scattering", "augmented", "hog", "lsd"])
    assert (mvmr.config.dataset.name, mvmr.config.batch_size, mvmr.config.epochs, mvmr.config.augment) == ("stl10", 64, 100, "simclr")
    (corinfomax,) = [c.config for c in _shared(["corinfomax_alpha", "corinfomax_main"])]
    assert (corinfomax.method.alpha, corinfomax.method.projector, corinfomax.dataset.name) == (1000, "4096-4096-128", "cifar100")
    assert (corinfomax.batch_size, corinfomax.optimizer.scaled_lr(corinfomax.batch_size)) == (512, 0.5)
    (shared,) = _shared(["mveb_target", "mveb_batch_size"])
    assert (shared.config.method.target, shared.config.batch_size, shared.config.optimizer.scaled_lr(1024)) == ("shared", 1024, 0.2)


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory):
    """One folder for every smoke run (the queue, the MLflow store, the cells, the caches) and a teacher's weights."""
    base = tmp_path_factory.mktemp("paper_suites")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), base / "teacher.pt")
    return base


def _family(name: str) -> str:
    """The paper (or ``baselines``, ``detection``) a suite belongs to; its suites share cells."""
    return name.split("_")[0]


@pytest.mark.xdist_group("paper_suites")
@pytest.mark.parametrize("name", sorted(PAPER_CELLS))
def test_suite_runs_at_smoke_scale(name, smoke_base):
    storage = f"sqlite:///{smoke_base}/optuna.db"
    sets = ["epochs=1", "dataset={name: shapes, n_train: 64, n_test: 64}", "backbone={name: small_cnn, width: 4}", "batch_size=32",
            "train.progress=false", "train.checkpoint_every=0", "evaluations.probes=[logreg, {name: linear, epochs: 1}]",
            f"tracking.mlflow_uri=sqlite:///{smoke_base}/mlflow.db", f"storage.runs_dir={smoke_base}/cells",
            f"train.cache_dir={smoke_base}/cache", *(s.replace(TEACHER, str(smoke_base / "teacher.pt")) for s in SMOKE[name])]
    cells = _cells(name, sets)
    assert main(["run", str(_path(name)), "--launcher", "print", "--storage", storage, "--set", *sets]) == 0
    assert main(["worker", "--storage", storage, "--study", name]) == 0
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len(trials) == len(cells)
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    if name == max(n for n in PAPER_CELLS if _family(n) == _family(name)):  # the family's last suite: its cells are done
        for cell_dir in (smoke_base / "cells").iterdir():
            shutil.rmtree(cell_dir)


def _transfer_metrics(extra: list[DatasetConfig]) -> tuple[dict[str, float], torch.nn.Module]:
    """kNN metrics of a random small CNN on shapes, and on each set of ``extra``; and the CNN."""
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="small_cnn", width=4), 3)
    splits = load_dataset(DatasetConfig(name="shapes", n_train=100, n_test=50))
    cfg = EvalConfig(probes=[], knn_k=[5], diagnostics=False, datasets=extra)
    return evaluate_backbone(backbone, splits, cfg, torch.device("cpu"), seed=0).metrics, backbone


def test_eval_datasets_add_prefixed_metrics_of_the_frozen_backbone_on_another_set():
    other = DatasetConfig(name="shapes", n_train=80, n_test=40, seed=3)
    metrics, backbone = _transfer_metrics([other])
    alone, _ = _transfer_metrics([])
    splits = load_dataset(other)
    (train_f, train_y), (val_f, val_y), (test_f, test_y) = (extract_features(backbone, s, torch.device("cpu"))
                                                            for s in (splits.train, splits.val, splits.test))
    chosen = knn_eval(train_f, train_y, val_f, val_y, 10, ks=(5,), temperature=0.07)  # the bank: train
    final = knn_eval(torch.cat([train_f, val_f]), torch.cat([train_y, val_y]), test_f, test_y, 10, ks=(5,), temperature=0.07)
    assert metrics == {**alone, **{f"shapes.{key}": value for key, value in final.items()},
                       **{f"val.shapes.{key}": value for key, value in chosen.items()}}
    assert set(alone) == {"knn5.top1", "knn5.top5", "val.knn5.top1", "val.knn5.top5"}


def test_eval_datasets_refuse_other_channels_repeated_names_and_unknown_sets():
    with pytest.raises(ConfigError, match="digits has 1-channel images but the backbone was pre-trained on 3-channel"):
        _transfer_metrics([DatasetConfig(name="digits")])
    with pytest.raises(ConfigError, match="eval.datasets: .*lists a name twice"):
        resolve_run_config({"method": "simclr", "eval": {"datasets": [{"name": "shapes"}, {"name": "shapes", "seed": 1}]}})
    with pytest.raises(ConfigError, match="eval.datasets: .*unknown dataset 'cifar11'"):
        resolve_run_config({"method": "simclr", "eval": {"datasets": [{"name": "cifar11"}]}})


@pytest.mark.parametrize("extra,error", [
    ({"name": "cifar10", "root": "missing/cifar10"}, DataError),
    ({"name": "digits"}, ConfigError),  # grey images for an RGB backbone
])
def test_a_bad_eval_dataset_fails_the_run_before_training(tmp_path, extra, error):
    cfg = resolve_run_config({"method": "simclr", "dataset": {"name": "shapes", "n_train": 64, "n_test": 32},
                              "backbone": {"name": "small_cnn", "width": 4}, "epochs": 1, "batch_size": 32,
                              "train": {"progress": False}, "eval": {"datasets": [extra]}})
    with pytest.raises(error, match="cifar10|digits"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

"""Small suites run for real (worker processes, Optuna queue, MLflow store) for the report tests.

``run_ablation_suite`` trains 2 methods x 2 datasets x 2 seeds with a projector ablation for VICReg,
one cell set to diverge (failed) and, after the run, one more seed added to the suite file for SimCLR on
shapes that was never run (missing). ``run_search_suite`` runs a 6-trial TPE search with the median pruner.
Both work in ``base`` (the default stores land in ``base/results``) and return the suite file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import yaml

from bench.cli import main

DEFAULTS = {
    "dataset": {"name": "shapes", "n_train": 256, "n_test": 64},
    "backbone": {"name": "small_cnn", "width": 4},
    "epochs": 2,
    "batch_size": 64,
    "optimizer": {"name": "adamw", "lr": 1.0e-3, "lr_scaling": "none"},
    "schedule": {"warmup_epochs": 0},
    "train": {"progress": False, "knn_every": 1},
}


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_ablation_suite(base: Path) -> Path:
    """Run the ablation suite in ``base``; returns the suite file (with the never-run cell added).

    13 cells: SimCLR on 2 datasets x 2 seeds; VICReg with 2 projectors on 2 datasets x 2 seeds; and one
    VICReg cell (digits, seed 1, projector 32-32) with an absurd learning rate that diverges.
    """
    huge = 1.0e30
    suite = {
        "name": "report_ablation",
        "defaults": DEFAULTS,
        "evaluations": {"probes": [{"name": "linear", "epochs": 5}], "knn_k": [20]},
        "matrix": {"method": ["simclr", "vicreg"], "dataset": ["shapes", "digits"]},
        "ablations": {"simclr.projector": ["16-8"], "vicreg.projector": ["16-16", "32-32"],
                      "vicreg.optimizer.lr": [1.0e-3, huge]},
        "exclude": [{"vicreg.optimizer.lr": huge, "dataset": "shapes"}, {"vicreg.optimizer.lr": huge, "seed": 0},
                    {"vicreg.optimizer.lr": huge, "vicreg.projector": "16-16"}],
        "seeds": [0, 1],
        "storage": {"heartbeat_interval": 1, "grace_period": 3},
        "launcher": {"workers": 2},
    }
    path = base / "report_ablation.yaml"
    with _cwd(base):
        path.write_text(yaml.safe_dump(suite))
        assert main(["run", str(path)]) == 5  # the diverging cell failed
        suite["seeds"] = [0, 1, 2]
        suite["exclude"] += [{"seed": 2, "method": "vicreg"}, {"seed": 2, "dataset": "digits"}]
        path.write_text(yaml.safe_dump(suite))
    return path


def run_search_suite(base: Path) -> Path:
    """Run a 6-trial TPE search over lr and temperature with the median pruner in ``base``."""
    suite = {
        "name": "report_search",
        "defaults": {**DEFAULTS, "method": "simclr", "epochs": 3},
        "evaluations": {"probes": [], "knn_k": [20]},
        "ablations": {"simclr.projector": ["16-8"]},
        "search": {"space": {"optimizer.lr": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
                             "method.temperature": {"type": "float", "low": 0.05, "high": 1.0}},
                   "sampler": "tpe", "pruner": "median", "n_trials": 6, "n_startup_trials": 2, "n_warmup_steps": 1},
    }
    path = base / "report_search.yaml"
    with _cwd(base):
        path.write_text(yaml.safe_dump(suite))
        assert main(["search", str(path), "--workers", "1"]) == 0
    return path

"""Hyper-parameter search: the suite's ``search`` block as an Optuna sampler, pruner and search space.

The study is the same queue as a matrix suite's; a worker with nothing waiting asks the sampler for a new
trial while fewer than ``n_trials`` have been started (retries of failed trials do not count). Pruning acts
on the online kNN accuracy on the validation split that the engine reports each ``train.knn_every`` epochs
(``bench.train.records.MONITOR``; RankMe for the label-free objective ``val.rankme``), and the objective is a
``val.*`` metric: no choice of a search reads the test split.
"""

from __future__ import annotations

from typing import Any

import optuna

from bench.config.search import DEFAULT_SEARCH_METRIC, SearchConfig
from bench.train.engine import RANKME_METRIC
from bench.train.records import EpochRecord, Monitor


def build_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.GridSampler({key: p.grid() for key, p in cfg.space.items()}, seed=cfg.seed)


def build_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, cfg: SearchConfig) -> dict[str, Any]:
    """Sample (or, for a retried trial, re-read) one value per dotted key of the space."""
    params: dict[str, Any] = {}
    for key, p in cfg.space.items():
        if p.type == "float":
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    return params


def search_exhausted(study: optuna.Study, cfg: SearchConfig) -> bool:
    """True once ``n_trials`` trials were started (re-enqueued retries are the same trial again)."""
    started = [t for t in study.get_trials(deepcopy=False) if "failed_trial" not in t.system_attrs]
    return len(started) >= cfg.n_trials


def objective_metric(cfg: SearchConfig | None) -> str:
    """The metric the study's objective reads: the search metric, else (a matrix suite's trials are sorted by it)
    validation kNN top-1; both ``val.*``."""
    return cfg.metric if cfg else DEFAULT_SEARCH_METRIC


def objective_value(metrics: dict[str, float], cfg: SearchConfig | None) -> float:
    """The study's objective: ``objective_metric``'s value (0 when the run has no such metric)."""
    return float(metrics.get(objective_metric(cfg), 0.0))


def pruning_value(monitor: Monitor, cfg: SearchConfig | None) -> float:
    """The number of an epoch's monitor that the pruner reads: RankMe when the objective is the label-free
    ``val.rankme``, else the validation kNN accuracy; either way a validation-split number."""
    return monitor.rankme if objective_metric(cfg) == RANKME_METRIC else monitor.knn20_top1


def report_epoch(trial: optuna.Trial, record: EpochRecord, cfg: SearchConfig | None = None) -> None:
    """Hand one epoch's monitor (``pruning_value``) to the pruner; raise TrialPruned when it prunes."""
    if record.monitor is not None:
        trial.report(pruning_value(record.monitor, cfg), record.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

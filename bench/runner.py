"""One run end to end: pre-train, evaluate, and write ``metrics.json`` beside the checkpoint.

The baselines (bench/methods/baselines.py) go through the same run: ``random_init`` trains for 0 epochs (the backbone
at its initialisation for the seed) and is evaluated like any backbone; ``raw_pixels`` trains nothing at all and is
evaluated on the normalised, flattened pixels (``evaluate_pixels``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench.config.run import RunConfig, config_id
from bench.core.cost import cell_clock, cost_metrics, stage
from bench.core.states import CellStatus
from bench.core.files import write_json
from bench.data.registry import DatasetSplits, load_dataset
from bench.eval.protocols import evaluate_backbone, evaluate_pixels, load_eval_datasets
from bench.methods.baselines import Baseline
from bench.tracking.fingerprint import fingerprint, write_fingerprint
from bench.core.collectives import world_size
from bench.core.device import pick_device
from bench.train.engine import RANKME_METRIC, TrainResult, cell_scope, train
from bench.train.records import EpochRecord, ReportCost, RunReport, SplitSizes

METRICS = "metrics.json"


def default_run_dir(cfg: RunConfig, root: Path = Path("results/runs")) -> Path:
    return root / f"{cfg.method.name}-{cfg.dataset.name}-{config_id(cfg)}"


def run(cfg: RunConfig, run_dir: Path, *, splits: DatasetSplits | None = None, console: Console | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None) -> RunReport:
    """Train (resuming if a checkpoint exists), evaluate, and return the run's report (also written to ``METRICS``).

    Every dataset is loaded first, so a missing file fails the run before training. The cell's fingerprint is
    written to ``run_dir`` before it trains; its ``cost.*`` metrics time every stage (``bench.core.cost``).
    """
    device = pick_device(cfg.train.device)
    with cell_clock(device) as clock:
        with stage("load"):
            splits = splits or load_dataset(cfg.dataset)
            extra = load_eval_datasets(cfg.eval.datasets, splits.train.channels)
        with cell_scope(cfg) as settings:
            with stage("fingerprint"):
                record = fingerprint(cfg, splits, settings.as_record(), device)
                write_fingerprint(record, run_dir)
            result: TrainResult | None = None
            if cfg.method.name == Baseline.RAW_PIXELS:  # nothing to train: the pixels are the features
                evaluation = evaluate_pixels(splits, cfg.eval, device, cfg.seed, extra, size=cfg.method.pixels_size)
            else:
                result = train(cfg, run_dir, splits=splits, console=console, on_epoch=on_epoch)
                evaluation = evaluate_backbone(result.method.backbone, splits, cfg.eval, result.device, cfg.seed, extra)
        cost = cost_metrics(clock, gpus=world_size(), image_epochs=cfg.epochs * len(splits.pretrain))
    history = result.history if result is not None else []
    metrics = evaluation.metrics | {"train.seconds": result.seconds if result is not None else 0.0}
    if history:  # none with epochs: 0 (the backbone at its initialisation) or raw pixels
        last = history[-1]
        metrics.update({"train.loss": last.loss, "train.images_per_s": last.images_per_s})
        if last.monitor is not None:  # the monitor read the final backbone: a label-free objective (search.metric)
            metrics[RANKME_METRIC] = last.monitor.rankme
    metrics.update(cost)
    report = RunReport(
        status=CellStatus.COMPLETE, config_id=config_id(cfg), metrics=metrics, selection=evaluation.selection,
        test_reads=evaluation.test_reads, splits=split_sizes(splits), history=history,
        resumed_from_epoch=result.resumed_from if result is not None else 0.0, torch=settings.as_record(),
        fingerprint=record, cost=ReportCost(device=record["hardware"]["device"], gpus=world_size(), memory=clock.memory),
        config=cfg.model_dump(mode="json"))
    write_json(report.model_dump(mode="json"), run_dir / METRICS)
    return report


def split_sizes(splits: DatasetSplits) -> SplitSizes:
    """Images per split: pre-training, probe fitting (train), selection (val) and the reported test split."""
    return SplitSizes(pretrain=len(splits.pretrain), train=len(splits.train), val=len(splits.val or []), test=len(splits.test))


"""``ssl-bench quickstart``: a few methods on bundled data, side by side with what no learning gives.

Reads a small suite (``defaults``, ``matrix.method``, per-method ``ablations`` of one value each:
``byol.tau_base`` sets a hyper-parameter of the method, ``byol.epochs`` a run key for that method only),
trains each method, and prints one comparison table that includes the raw-pixel and random-init
rows, so the reader sees what pre-training added. Finished runs are reused, not retrained.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.config import apply_overrides, resolve_run_config
from bench.config.run import RunConfig, config_id
from bench.data.registry import load_dataset
from bench.errors import ConfigError
from bench.methods import method_class
from bench.eval.protocols import evaluate_backbone, evaluate_pixels
from bench.runner import METRICS, run
from bench.train.engine import build_method, configure_torch

COLUMNS = [("knn20.top1", "kNN k=20"), ("knn200.top1", "kNN k=200"), ("linear.top1", "linear"),
           ("diag.effective_rank", "eff. rank"), ("train.seconds", "train s")]


def quickstart_configs(path: Path, sets: list[str]) -> list[RunConfig]:
    """The resolved run config of every method of the suite, validated before anything runs."""
    if not path.exists():
        raise ConfigError(f"suite file {path} does not exist")
    suite = yaml.safe_load(path.read_text()) or {}
    defaults = suite.get("defaults", {})
    methods = suite.get("matrix", {}).get("method", [])
    if not methods:
        raise ConfigError(f"{path}: matrix.method must list at least one method")
    configs = []
    for name in methods:
        assignments = [f"method={name}"]
        for key, values in (suite.get("ablations") or {}).items():
            owner, _, param = key.partition(".")
            if owner != name:
                continue
            if not isinstance(values, list) or len(values) != 1:
                raise ConfigError(f"{path}: ablations.{key}: the quickstart takes exactly one value per key")
            target = f"method.{param}" if param in method_class(name).Params.model_fields else param
            assignments.append(f"{target}={json.dumps(values[0])}")
        configs.append(resolve_run_config(apply_overrides(defaults, assignments + list(sets))))
    return configs


def _run_quietly(config: dict, run_dir: str) -> dict[str, float]:
    """Worker-process entry: one run with its own progress bar off."""
    return run(resolve_run_config(config), Path(run_dir), console=Console(quiet=True))["metrics"]


def quickstart(path: Path, out: Path, *, console: Console, sets: list[str], workers: int) -> dict[str, dict[str, float]]:
    """Train every method of the suite (``workers`` at a time, one thread each) and print the comparison."""
    configs = quickstart_configs(path, sets)
    results: dict[str, dict[str, float]] = {}
    todo = []
    for cfg in configs:
        done = out / f"{cfg.method.name}-{config_id(cfg)}" / METRICS
        if done.exists():
            console.print(f"{cfg.method.name}: finished earlier, reusing {done}")
            results[cfg.method.name] = json.loads(done.read_text())["metrics"]
        else:
            todo.append(cfg)
    if todo:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress, \
                ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            task = progress.add_task(f"training {', '.join(c.method.name for c in todo)} ({workers} at a time)", total=len(todo))
            futures = {pool.submit(_run_quietly, c.model_dump(mode="json"), str(out / f"{c.method.name}-{config_id(c)}")): c
                       for c in todo}
            for future in as_completed(futures):
                cfg = futures[future]
                results[cfg.method.name] = future.result()
                progress.advance(task)
                progress.console.print(f"{cfg.method.name}: kNN {100 * results[cfg.method.name]['knn20.top1']:.1f}%")
    rows = {c.method.name: results[c.method.name] for c in configs}

    reference = configs[0]
    device = configure_torch(reference)
    splits = load_dataset(reference.dataset)
    rows["random init"] = evaluate_backbone(build_method(reference, splits).backbone.to(device), splits, reference.eval, device, reference.seed)
    rows["raw pixels"] = evaluate_pixels(splits, reference.eval, device, reference.seed)

    table = Table("method", *[title for _, title in COLUMNS],
                  title=f"{reference.dataset.name}: {reference.backbone.name}, {reference.epochs} epochs, batch {reference.batch_size}")
    for name, metrics in rows.items():
        cells = []
        for key, _ in COLUMNS:
            value = metrics.get(key)
            cells.append("-" if value is None else (f"{value:.0f}" if key == "train.seconds" else
                                                    f"{value:.1f}" if key == "diag.effective_rank" else f"{100 * value:.1f}"))
        table.add_row(name, *cells, style="dim" if name in ("random init", "raw pixels") else None)
    console.print(table)
    return rows

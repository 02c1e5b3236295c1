"""``ssl-bench quickstart``: a few methods on bundled data, side by side with what no learning gives.

Reads a small suite (``defaults``, ``matrix.method``, per-method ``ablations`` of one value each),
trains each method, and prints one comparison table that includes the raw-pixel and random-init
rows, so the reader sees what pre-training added. Finished runs are reused, not retrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from bench.config import apply_overrides, resolve_run_config
from bench.config.run import RunConfig, config_id
from bench.data.registry import load_dataset
from bench.errors import ConfigError
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
            assignments.append(f"method.{param}={json.dumps(values[0])}")
        configs.append(resolve_run_config(apply_overrides(defaults, assignments + list(sets))))
    return configs


def quickstart(path: Path, out: Path, *, console: Console, sets: list[str]) -> dict[str, dict[str, float]]:
    configs = quickstart_configs(path, sets)
    rows: dict[str, dict[str, float]] = {}
    for i, cfg in enumerate(configs, 1):
        run_dir = out / f"{cfg.method.name}-{config_id(cfg)}"
        done = run_dir / METRICS
        if done.exists():
            console.print(f"[{i}/{len(configs)}] {cfg.method.name}: finished earlier, reusing {done}")
            rows[cfg.method.name] = json.loads(done.read_text())["metrics"]
            continue
        console.print(f"[{i}/{len(configs)}] training {cfg.method.name} ({cfg.epochs} epochs on {cfg.dataset.name})")
        rows[cfg.method.name] = run(cfg, run_dir, console=console)["metrics"]

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

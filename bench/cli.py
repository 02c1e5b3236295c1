"""``ssl-bench``: the command line.

Exit codes: 0 success, 2 bad input (config, data, command line), 3 training diverged,
4 interrupted by SIGTERM (a checkpoint was written; the same command resumes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from bench.errors import ConfigError, DivergedError, UserError

EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4


def _load_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from bench.config import apply_overrides, resolve_run_config
    from bench.runner import default_run_dir, run

    data = _load_yaml(args.config) if args.config else {}
    sets = list(args.set)
    if args.method:
        sets.insert(0, f"method={args.method}")
    if args.dataset:
        sets.insert(0, f"dataset={args.dataset}")
    cfg = resolve_run_config(apply_overrides(data, sets))
    run_dir = args.out or default_run_dir(cfg)
    if args.fresh:
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    console.print(f"[bold]{cfg.method.name}[/] on [bold]{cfg.dataset.name}[/]: {cfg.epochs} epochs, batch {cfg.batch_size} -> {run_dir}")
    report = run(cfg, run_dir, console=console)
    table = Table("metric", "value", title=f"{cfg.method.name} on {cfg.dataset.name}")
    for key, value in report["metrics"].items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    return 0


def cmd_quickstart(args: argparse.Namespace, console: Console) -> int:
    from bench.quickstart import quickstart

    quickstart(args.suite, args.out, console=console, sets=args.set, workers=args.workers)
    return 0


def cmd_perf(args: argparse.Namespace, console: Console) -> int:
    from bench.perf import perf

    perf(quick=args.quick, out_dir=args.out, console=console)
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from bench.data.registry import DATASETS, _import_loaders
    from bench.methods import all_methods

    _import_loaders()
    methods = Table("method", "recipe", "optimizer", title="methods")
    for name, cls in sorted(all_methods().items()):
        methods.add_row(name, cls.recipe, f"{cls.optimizer['name']} lr {cls.optimizer['lr']}")
    datasets = Table("dataset", "needs root", "summary", title="datasets")
    for name, spec in sorted(DATASETS.items()):
        datasets.add_row(name, "yes" if spec.needs_root else "no", spec.summary)
    console.print(methods, datasets)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench", description="Benchmark harness for self-supervised learning")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pre-train and evaluate one method on one dataset")
    p.add_argument("--method", help="method name (see `ssl-bench list`)")
    p.add_argument("--dataset", help="dataset name (see `ssl-bench list`)")
    p.add_argument("--config", type=Path, help="YAML file of run-config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. optimizer.lr=0.1")
    p.add_argument("--out", type=Path, help="run directory (default: results/runs/<method>-<dataset>-<config id>)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in the run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", help="train a few methods on bundled data and print a comparison")
    p.add_argument("--suite", type=Path, default=Path(__file__).resolve().parent.parent / "suites" / "quickstart.yaml")
    p.add_argument("--out", type=Path, default=Path("results/quickstart"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of every run")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at the same time")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("perf", help="measure the data path, training throughput and evaluation speed")
    p.add_argument("--quick", action="store_true", help="small sizes (minutes on a CPU)")
    p.add_argument("--out", type=Path, default=Path("results/perf"))
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("list", help="list the registered methods and datasets")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    err = Console(stderr=True, soft_wrap=True)
    from bench.train.engine import Preempted

    try:
        return args.func(args, console)
    except UserError as e:
        err.print(f"error: {e}", style="bold red", markup=False, highlight=False)
        return e.exit_code
    except DivergedError as e:
        err.print(f"{e}: the loss became NaN or infinite; lower optimizer.lr or set train.grad_clip. "
                  "The last good checkpoint is kept.", style="bold red", markup=False, highlight=False)
        return EXIT_DIVERGED
    except Preempted as e:
        err.print(f"{e}; run the same command again to resume", style="yellow", markup=False, highlight=False)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())

"""``ssl-bench``: the command line.

Exit codes: 0 success, 2 bad input (config, data, command line), 3 training diverged,
4 interrupted by SIGTERM (a checkpoint was written; the same command resumes), 5 some cells of a suite failed
(``ssl-bench status`` shows which and why).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.core.states import CellStatus
from bench.errors import ConfigError, Diverged, UserError

EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4
EXIT_CELLS_FAILED = 5


def _load_yaml(path: Path) -> dict:
    from bench.config.yamlfile import read_yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from bench.config import apply_overrides, resolve_run_config
    from bench.runner import default_run_dir, run
    from bench.train.checkpoint import CHECKPOINT

    data = _load_yaml(args.config) if args.config else {}
    sets = list(args.set)
    if args.method:
        sets.insert(0, f"method={args.method}")
    if args.dataset:
        sets.insert(0, f"dataset={args.dataset}")
    cfg = resolve_run_config(apply_overrides(data, sets))
    run_dir = args.out or default_run_dir(cfg)
    if args.fresh:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
    console.print(f"[bold]{cfg.method.name}[/] on [bold]{cfg.dataset.name}[/]: {cfg.epochs} epochs, batch {cfg.batch_size} -> {run_dir}")
    report = run(cfg, run_dir, console=console)
    table = Table("metric", "value", title=f"{cfg.method.name} on {cfg.dataset.name}")
    for key, value in report.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    return 0


def _suite(args: argparse.Namespace, *, preflight: bool = False):
    """The suite and all its cells: pre-training cells, then the detection cells that depend on them.

    With ``preflight`` the suite's models are built and its data files looked for too (bench/orchestrate/preflight.py).
    """
    from bench.suite.suite import expand_suite, load_suite, stage_cells
    from bench.orchestrate.preflight import suite_checks

    suite = load_suite(args.suite, args.set, suite_checks() if preflight else None)
    cells = expand_suite(suite)
    return suite, cells + stage_cells(suite, cells)


def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from bench.orchestrate.view import cells_table

    suite, cells = _suite(args, preflight=True)
    console.print(cells_table(cells, f"suite {suite.name}: {len(cells)} cells"))
    if suite.search:
        console.print(f"search: {len(suite.search.space)} parameters, {suite.search.sampler} sampler, "
                      f"{suite.search.pruner} pruner, metric {suite.search.metric} ({suite.search.direction})")
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from bench.orchestrate.launch import run_suite, storage_url
    from bench.orchestrate.view import cells_table, failure_lines, states_table

    suite, cells = _suite(args, preflight=True)
    if args.require_search and not suite.search:
        raise ConfigError(f"{args.suite}: `ssl-bench search` needs a search block; use `ssl-bench run` for a matrix suite")
    if args.dry_run:
        from bench.orchestrate.estimate import estimate_table

        console.print(cells_table(cells, f"suite {suite.name}: {len(cells)} cells (dry run: nothing queued)"))
        console.print(estimate_table(suite, cells))
        return 0
    states = run_suite(suite, cells, storage_url(suite, args.storage), launcher=args.launcher or suite.launcher.name,
                       workers=args.workers, console=console, retry_failed=args.retry_failed, sets=args.set)
    if states is None:
        return 0
    console.print(states_table(states, f"suite {suite.name}"))
    for line in failure_lines(states):
        console.print(line, style="red", markup=False, highlight=False)
    return EXIT_CELLS_FAILED if any(s.state == CellStatus.FAILED for s in states) else 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    from bench.orchestrate.worker import work

    summary = work(args.storage, args.study, console=console, max_cells=args.max_cells, mlflow_uri=args.mlflow_uri)
    console.print(f"worker done: {len(summary.complete)} complete, {len(summary.failed)} failed, {len(summary.pruned)} pruned")
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from bench.suite.as_run import shown_suite
    from bench.suite.suite import expand_suite, stage_cells
    from bench.orchestrate.launch import current_states, load_study, storage_url
    from bench.orchestrate.queue import cell_states, study_history
    from bench.orchestrate.view import failure_lines, states_table

    def history(suite):
        url = storage_url(suite, args.storage)
        return study_history(load_study(suite, url), url)

    shown = shown_suite(args.suite, args.set, as_run=args.as_run, as_file=args.as_file, history=history)
    suite = shown.suite
    cells = expand_suite(suite)
    cells += stage_cells(suite, cells)
    url = storage_url(suite, args.storage)
    study = load_study(suite, url)
    states = cell_states(None, cells) if study is None else current_states(study, cells, suite)
    console.print(shown.line, markup=False, highlight=False)
    console.print(states_table(states, f"suite {suite.name} ({url})"))
    for line in failure_lines(states):
        console.print(line, style="red", markup=False, highlight=False)
    return 0


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    from bench.report.table import cmd_table as table

    return table(args, console)


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from bench.report.compare import cmd_compare as compare

    return compare(args, console)


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    from bench.report.leaderboard import cmd_leaderboard as leaderboard

    return leaderboard(args, console)


def cmd_transfer(args: argparse.Namespace, console: Console) -> int:
    from pydantic import ValidationError

    from bench.config import apply_overrides
    from bench.config.run import TrainConfig, format_validation_error
    from bench.tracking.mlflow_runs import SuiteTracker, tracking_uri
    from bench.train.engine import MODEL
    from bench.transfer.stage import DetectionStage, run_stage

    data = apply_overrides(_load_yaml(args.config) if args.config else {}, args.set)
    try:
        stage = DetectionStage.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None
    source = None if args.source == "none" else Path(args.source)
    if source is not None and source.is_dir():
        source = source / MODEL
    metrics = run_stage(stage, source, args.out, TrainConfig().cache_dir).metrics
    table = Table("metric", "value", title=f"detection transfer from {args.source}")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    tracker = SuiteTracker(tracking_uri(args.tracking), args.experiment)
    run_id = tracker.finished_run(f"{args.source}-{stage.backend}", role="transfer", metrics=metrics,
                                  params={"source": args.source, **stage.model_dump(mode="json")})
    console.print(f"MLflow run {run_id} (experiment {args.experiment!r}, {tracker.uri})")
    return 0


def cmd_perf(args: argparse.Namespace, console: Console) -> int:
    from bench.perf import PerfOptions, perf, scenario_table

    if args.list:
        console.print(scenario_table())
        return 0
    perf(PerfOptions(quick=args.quick, scenarios=args.scenario, max_batch=args.max_batch), out_dir=args.out, console=console)
    return 0


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from bench.data.registry import DATASETS
    from bench.methods import all_methods
    from bench.models.backbones import BACKBONES

    methods = Table("method", "recipe", "optimizer", "presets", title="methods")
    for name, cls in sorted(all_methods().items()):
        methods.add_row(name, cls.recipe, f"{cls.optimizer['name']} lr {cls.optimizer['lr']}", ", ".join(sorted(cls.presets)))
    backbones = Table("backbone", "summary", title="backbones")
    for name, summary in BACKBONES.items():
        backbones.add_row(name, summary)
    datasets = Table("dataset", "needs root", "summary", title="datasets")
    for name, spec in sorted(DATASETS.items()):
        datasets.add_row(name, "yes" if spec.needs_root else "no", spec.summary)
    console.print(methods, backbones, datasets)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench", description="Benchmark harness for self-supervised learning")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parsers(sub)
    _report_parsers(sub)
    _tool_parsers(sub)
    return parser


def _suite_parser(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text)
    p.add_argument("suite", type=Path, help="suite YAML file (see suites/)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a suite or run-config key, e.g. epochs=1 dataset=shapes storage.url=...")
    return p


def _as_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-run", type=int, metavar="N",
                   help="show the N-th variant of the suite that `run` queued (default: the one run last)")
    p.add_argument("--as-file", action="store_true", help="show the suite file as it is now (as --set does)")


def _run_parsers(sub: argparse._SubParsersAction) -> None:
    """``train`` (one run) and the suite commands that queue, run and watch cells."""
    from bench.suite.infra import Launcher

    p = sub.add_parser("train", help="pre-train and evaluate one method on one dataset")
    p.add_argument("--method", help="method name (see `ssl-bench list`)")
    p.add_argument("--dataset", help="dataset name (see `ssl-bench list`)")
    p.add_argument("--config", type=Path, help="YAML file of run-config keys")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override a config key, e.g. optimizer.lr=0.1")
    p.add_argument("--out", type=Path, help="run directory (default: results/runs/<method>-<dataset>-<config id>)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in the run directory")
    p.set_defaults(func=cmd_train)

    p = _suite_parser(sub, "validate", "check a suite and show its cells, writing nothing")
    p.set_defaults(func=cmd_validate)
    for name, text, search in (("run", "queue a suite's cells and start workers", False),
                               ("search", "run a suite's hyper-parameter search (its `search` block)", True)):
        p = _suite_parser(sub, name, text)
        p.add_argument("--launcher", type=Launcher, choices=list(Launcher), help="default: the suite's launcher.name")
        p.add_argument("--workers", type=int, help="workers to start (default: one per GPU, else the suite's)")
        p.add_argument("--storage", help="Optuna storage URL (default: the suite's, else sqlite:///results/optuna.db)")
        p.add_argument("--dry-run", action="store_true", help="show the cells and their estimated cost without queueing anything")
        p.add_argument("--retry-failed", action="store_true", help="queue failed cells again")
        p.set_defaults(func=cmd_run, require_search=search)
    p = _suite_parser(sub, "status", "the state of every cell of a suite (waiting, running, complete, failed, pruned)")
    p.add_argument("--storage", help="Optuna storage URL (default: the suite's, else sqlite:///results/optuna.db)")
    _as_run_options(p)
    p.set_defaults(func=cmd_status)


def _report_parsers(sub: argparse._SubParsersAction) -> None:
    """The commands that read results: ``table``, ``compare``, ``leaderboard``."""
    p = _suite_parser(sub, "table", "a paper-style table of a suite's results: mean ± std over seeds per rows x cols")
    p.add_argument("--rows", nargs="+", default=["method"], metavar="KEY",
                   help="row keys: axes, run-config keys or method params, e.g. method, projector, vicreg.projector")
    p.add_argument("--cols", nargs="+", default=["dataset"], metavar="KEY", help="column keys (as --rows)")
    p.add_argument("--metric", default="knn20.top1",
                   help="a final metric, e.g. linear.top1, knn20.top1, val.knn20.top1 (validation), diag.effective_rank")
    p.add_argument("--format", choices=["md", "csv", "tex", "html"], help="default: from --out's suffix, else md")
    p.add_argument("--baseline", metavar="VALUE",
                   help="a value of the first row key (e.g. simclr): adds the difference to that row and a t-test")
    p.add_argument("--paper", action="store_true", help="add the published number closest to each cell's protocol, marked "
                   "† (some must-match field differs) or ‡ (not stated), footnotes naming the fields")
    p.add_argument("--proxy", metavar="METRIC", help="a label-free metric, e.g. val.rankme: the caption adds Kendall's tau "
                   "between it and --metric over the suite's complete cells, and the cell it would have picked")
    p.add_argument("--out", type=Path, help="a file, or a directory: <dir>/<suite>/tables/<name>.<ext> (default: print)")
    p.add_argument("--tracking", metavar="URI",
                   help="MLflow tracking URI (default: the suite's, $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")
    _as_run_options(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("compare", help="a few runs side by side: the config keys that differ and their final metrics")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_CELL", help="cell ids or MLflow run ids")
    p.add_argument("--suite", type=Path, help="the suite they ran in (its tracking store and experiment)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="suite overrides, as for run")
    p.add_argument("--tracking", metavar="URI", help="MLflow tracking URI (default: the suite's, else $MLFLOW_TRACKING_URI)")
    _as_run_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("leaderboard", help="a static site: one sortable, filterable table across suites, a page per suite")
    p.add_argument("suites", nargs="+", type=Path, metavar="SUITE", help="suite YAML files")
    p.add_argument("--out", type=Path, default=Path("results/leaderboard"))
    p.add_argument("--tracking", metavar="URI",
                   help="MLflow tracking URI (default: each suite's, $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")
    p.add_argument("--storage", help="Optuna storage URL of search suites (default: the suite's, else sqlite:///results/optuna.db)")
    p.add_argument("--as-file", action="store_true", help="show the suite files as they are now (default: as each last ran)")
    p.set_defaults(func=cmd_leaderboard)


def _tool_parsers(sub: argparse._SubParsersAction) -> None:
    """Detection transfer, the worker a launcher starts, ``perf`` and ``list``."""
    p = sub.add_parser("transfer", help="detection transfer of one pre-trained backbone (COCO-format data)")
    p.add_argument("source", help="a run directory or its model.pt (`none`: a random-init backbone)")
    p.add_argument("--config", type=Path, help="YAML of the detection stage (backend, coco or synthetic, detector, ...)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="e.g. coco.root=/data/coco detector.schedule=1x, or synthetic={} for the generated set")
    p.add_argument("--out", type=Path, default=Path("results/transfer"), help="run directory (checkpoints, detection.json)")
    p.add_argument("--tracking", metavar="URI", help="MLflow tracking URI of the result (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///results/mlflow.db)")
    p.add_argument("--experiment", default="transfer", help="MLflow experiment of the result's run (default: transfer)")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("worker", help="run waiting cells of a suite's study until none is left")
    p.add_argument("--storage", required=True, help="Optuna storage URL of the suite's study")
    p.add_argument("--study", required=True, help="study name (the suite's name)")
    p.add_argument("--max-cells", type=int, help="stop after this many cells")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI as this machine reaches it (default: the one run recorded)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("perf", help="benchmark training scenarios against the classic pipeline and the compute bound, and evaluation speed")
    p.add_argument("--quick", action="store_true", help="the CPU-sized scenarios and evaluation sizes (minutes on a CPU)")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME",
                   help="measure only this scenario (repeatable; skips the evaluation sections); see --list")
    p.add_argument("--list", action="store_true", help="list the scenarios and their targets, then exit")
    p.add_argument("--max-batch", action="store_true", help="CUDA only: also search each scenario's largest batch that fits")
    p.add_argument("--out", type=Path, default=Path("results/perf"))
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("list", help="list the registered methods, backbones and datasets")
    p.set_defaults(func=cmd_list)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the reports read small artifacts (a suite, a config); MLflow would draw a progress bar for each
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)  # wide tables in logs and pipes
    err = Console(stderr=True, soft_wrap=True)
    from bench.core.signals import Preempted

    try:
        return args.func(args, console)
    except UserError as e:
        err.print(f"error: {e}", style="bold red", markup=False, highlight=False)
        return e.exit_code
    except Diverged as e:
        err.print(f"{e}: the loss became NaN or infinite; {e.fix}. "
                  "The last good checkpoint is kept.", style="bold red", markup=False, highlight=False)
        return EXIT_DIVERGED
    except Preempted as e:
        err.print(f"{e}; run the same command again to resume", style="yellow", markup=False, highlight=False)
        return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())

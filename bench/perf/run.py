"""``ssl-bench perf``: run the selected sections, print the tables and write the JSON."""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from bench.core.torch_state import threads_scope
from bench.errors import ConfigError
from bench.perf.evaluation import FULL_EVAL, QUICK_EVAL, measure_evaluation
from bench.perf.folder import FULL_FOLDER, QUICK_FOLDER, measure_folder_decode
from bench.perf.memory import max_batch
from bench.perf.mvmr import mvmr_cache
from bench.perf.references import measure_scenario
from bench.perf.report import check_targets, note, print_report, write_json
from bench.tracking.mlflow_runs import git_commit
from bench.perf.scenarios import SCENARIOS, select_scenarios
from bench.train.engine import pick_device


class PerfOptions(BaseModel):
    """What one ``ssl-bench perf`` invocation measures."""

    model_config = ConfigDict(extra="forbid")

    quick: bool = Field(False, description="the CPU-sized scenarios and evaluation sizes")
    scenarios: list[str] = Field(default_factory=list, description="only these scenarios; the evaluation sections are skipped")
    max_batch: bool = Field(False, description="also search each scenario's largest batch that fits (CUDA only)")


def scenario_table() -> Table:
    """Every registered scenario with its settings and targets (``ssl-bench perf --list``)."""
    table = Table("scenario", "steps x repeats", "quick", "targets (on CUDA)", title="perf scenarios")
    for name, s in SCENARIOS.items():
        targets = [f"ours/classic >= {s.min_vs_classic:g}"] if s.min_vs_classic else []
        targets += [f"ours/compute >= {s.min_vs_compute:g}"] if s.min_vs_compute else []
        table.add_row(name, f"{s.steps} x {s.repeats}", "yes" if s.quick else "", ", ".join(targets))
    return table


def _header(options: PerfOptions, device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "device_type": device.type,
        "host": platform.node(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "quick": options.quick,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 1,
        "evaluation_sizes": "quick" if options.quick else "full",
        "scenarios": {},
    }


def perf(options: PerfOptions, out_dir: Path, console: Console) -> dict:
    """Measure, print the tables and targets, and write every figure to a JSON file under ``out_dir``."""
    device = pick_device("auto")
    scenarios = select_scenarios(options.scenarios, options.quick)
    if device.type != "cuda" and not (options.quick or options.scenarios):
        raise ConfigError("the full benchmark is sized for a GPU (hours on a CPU); run `ssl-bench perf --quick`, "
                          "or name scenarios with --scenario")
    if options.max_batch and device.type != "cuda":
        raise ConfigError("--max-batch searches the largest batch that fits in GPU memory and needs CUDA; drop it on a CPU")
    # on a CPU one intra-op thread gives steady figures on a shared machine; the classic workers get the other cores
    threads = threads_scope(1) if device.type == "cpu" else contextlib.nullcontext()
    start = time.perf_counter()
    with threads:
        results = _header(options, device)
        with tempfile.TemporaryDirectory(prefix="ssl-bench-perf-") as tmp:
            scratch = Path(tmp)
            for scenario in scenarios:
                console.print(f"scenario {scenario.name}: ours, compute bound, classic ...")
                figures = measure_scenario(scenario, device, scratch)
                if options.max_batch:
                    console.print(f"scenario {scenario.name}: largest batch ...")
                    figures["max_batch"] = max_batch(scenario, device, scratch)
                results["scenarios"][scenario.name] = figures
            if not options.scenarios:
                console.print("evaluation: linear probe on cached features against the full network, kNN, extraction ...")
                results["evaluation"] = measure_evaluation(QUICK_EVAL if options.quick else FULL_EVAL, device, scratch)
                console.print("MV-MR with cached against recomputed representations ...")
                results["mvmr"] = mvmr_cache(device, scratch, options.quick)
                console.print("ImageFolder decode: our folder path against the PIL DataLoader ...")
                results["folder"] = measure_folder_decode(QUICK_FOLDER if options.quick else FULL_FOLDER, device, scratch)
    results["seconds"] = time.perf_counter() - start
    results["targets"] = check_targets(results)
    results["note"] = note(results)
    print_report(results, console)
    path = write_json(results, out_dir)
    console.print(f"{results['seconds']:.0f} s; written {path}")
    return results

"""What a suite will cost, from the cells that already ran (``run --dry-run``; ``docs/protocols.md`` §6.3).

Cells are grouped by cost signature: method, backbone config, dataset config (its images and their size),
batch size, precision, GPUs per cell and device model. For each complete cell ``i`` of a signature, read from
the ``cost.*`` metrics of its MLflow run (``bench.core.cost``)::

    r_i = cost.wall.train / cost.image_epochs          seconds per image-epoch
    e_i = cost.wall.total - cost.wall.train            seconds besides training (load, monitors, evaluation)
    N   = cost.image_epochs / epochs                   pre-training images (one dataset config: one N)

and a cell to run for E epochs is estimated at ``median(r) x E x N + median(e)`` seconds, within
``min(r) x E x N + min(e)`` and ``max(r) x E x N + max(e)``; GPU-hours are seconds x GPUs per cell / 3600.
A cell already complete (its cell id has a complete run) costs nothing. The device of a cell to run is this
machine's, as a local launch would use it: estimates never mix device models.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow import MlflowClient
from rich.table import Table

from bench.suite.suite import Cell, Suite
from bench.errors import ConfigError
from bench.stores import sqlite_file
from bench.tracking.fingerprint import TAG_PREFIX, device_model
from bench.tracking.mlflow_runs import CELL_ID, ROLE, STATUS, flatten_params, retry_locked, tracking_uri
from bench.core.device import pick_device

NO_ESTIMATE = "no estimate: no completed cell with the same method/backbone/dataset"
DEVICE_TAG = f"{TAG_PREFIX}hardware.device"


@dataclass(frozen=True)
class CostSignature:
    """What decides a cell's cost per image-epoch; ``label`` (not compared) names it for people."""

    method: str
    backbone: str
    dataset: str
    batch_size: str
    precision: str
    gpus: int
    device: str
    label: str = field(default="", compare=False)


@dataclass(frozen=True)
class CompletedCell:
    cell_id: str
    signature: CostSignature
    epochs: int
    train_seconds: float
    total_seconds: float
    image_epochs: float


@dataclass(frozen=True)
class PendingCell:
    cell_id: str
    signature: CostSignature
    epochs: int


@dataclass(frozen=True)
class GroupEstimate:
    """The cells of one signature: how many still run, what they cost (None: no estimate), from how many cells."""

    signature: CostSignature
    to_run: int
    complete: int
    basis: int
    seconds: tuple[float, float, float] | None  #: (estimate, low, high), all cells to run together

    @property
    def gpu_hours(self) -> tuple[float, float, float] | None:
        return None if self.seconds is None else tuple(s * self.signature.gpus / 3600 for s in self.seconds)


def signature(params: dict[str, str], *, gpus: int, device: str) -> CostSignature:
    """The cost signature of a cell from its flattened config (MLflow params: ``flatten_params``)."""

    def group(prefix: str) -> str:
        return json.dumps({k: v for k, v in params.items() if k.startswith(prefix)}, sort_keys=True)

    label = f"{params['method.name']} / {params['backbone.name']} / {params['dataset.name']}"
    return CostSignature(params["method.name"], group("backbone."), group("dataset."), params["batch_size"],
                         params["train.precision"], gpus, device, label)


def estimate(pending: Iterable[PendingCell], completed: Iterable[CompletedCell]) -> list[GroupEstimate]:
    """One estimate per signature of ``pending`` cells, in the order they first appear (see the module docstring)."""
    done = {c.cell_id for c in completed}
    by_signature: dict[CostSignature, list[CompletedCell]] = {}
    for cell in completed:
        by_signature.setdefault(cell.signature, []).append(cell)
    groups: dict[CostSignature, list[PendingCell]] = {}
    for cell in pending:
        groups.setdefault(cell.signature, []).append(cell)
    out = []
    for sig, cells in groups.items():
        to_run = [c for c in cells if c.cell_id not in done]
        basis = by_signature.get(sig, [])
        seconds = (0.0, 0.0, 0.0) if not to_run else _seconds(to_run, basis) if basis else None
        out.append(GroupEstimate(sig, len(to_run), len(cells) - len(to_run), len(basis), seconds))
    return out


def _seconds(cells: list[PendingCell], basis: list[CompletedCell]) -> tuple[float, float, float]:
    rates = [c.train_seconds / c.image_epochs for c in basis if c.image_epochs] or [0.0]  # none: 0-epoch cells (baselines)
    rest = [c.total_seconds - c.train_seconds for c in basis]
    images = statistics.median([c.image_epochs / c.epochs for c in basis if c.epochs] or [0.0])
    work = sum(c.epochs for c in cells) * images
    n = len(cells)
    return (statistics.median(rates) * work + statistics.median(rest) * n, min(rates) * work + min(rest) * n,
            max(rates) * work + max(rest) * n)


def completed_cells(uri: str) -> list[CompletedCell]:
    """Every complete cell with ``cost.*`` metrics in the store at ``uri`` (all experiments), the latest run of each
    cell id; none when the store does not exist (nothing is created)."""
    store = sqlite_file(uri)
    if store is not None and not store.is_file():
        return []
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in retry_locked(client.search_experiments)]
    query = f"tags.`{ROLE}` = 'cell' and tags.`{STATUS}` = 'complete'"
    found: dict[str, CompletedCell] = {}
    token = None
    while experiments:  # a page at a time, newest first
        page = retry_locked(client.search_runs, experiments, query, order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
            if "cost.image_epochs" not in metrics or DEVICE_TAG not in tags or tags.get(CELL_ID) in found:
                continue
            sig = signature(params, gpus=int(metrics["cost.gpus"]), device=tags[DEVICE_TAG])
            found[tags[CELL_ID]] = CompletedCell(tags[CELL_ID], sig, int(params["epochs"]), metrics.get("cost.wall.train", 0.0),
                                                  metrics["cost.wall.total"], metrics["cost.image_epochs"])
        token = page.token
        if not token:
            break
    return list(found.values())


def pending_cells(suite: Suite, cells: list[Cell]) -> list[PendingCell]:
    """The suite's pre-training cells with their signatures on this machine's device."""
    out = []
    for cell in cells:
        if cell.depends_on is None:
            params = flatten_params(cell.config.model_dump(mode="json"))
            sig = signature(params, gpus=suite.launcher.gpus_per_cell, device=_local_device(cell.config.train.device))
            out.append(PendingCell(cell.id, sig, cell.config.epochs))
    return out


def _local_device(name: str) -> str:
    try:
        return device_model(pick_device(name))
    except ConfigError:  # train.device=cuda on a machine without one
        return f"{name} (not visible here)"


def estimate_table(suite: Suite, cells: list[Cell]) -> Table:
    """``run --dry-run``'s cost table: one row per signature, and the total of the rows that have an estimate."""
    groups = estimate(pending_cells(suite, cells), completed_cells(tracking_uri(suite.tracking.mlflow_uri)))
    table = Table("method / backbone / dataset", "batch, precision, GPUs/cell, device", "to run", "complete",
                  "based on", "hours per cell", "GPU-hours (min-max)", title=f"suite {suite.name}: estimated cost")
    known = [g for g in groups if g.seconds is not None and g.to_run]
    for g in groups:
        sig = g.signature
        where = f"{sig.batch_size}, {sig.precision}, {sig.gpus}, {sig.device}"
        if g.seconds is None:
            table.add_row(sig.label, where, str(g.to_run), str(g.complete), "–", NO_ESTIMATE, "–")
            continue
        per_cell = g.seconds[0] / 3600 / g.to_run if g.to_run else 0.0
        hours = g.gpu_hours
        table.add_row(sig.label, where, str(g.to_run), str(g.complete), f"{g.basis} cells", f"{per_cell:.3g}",
                      f"{hours[0]:.3g} ({hours[1]:.3g}-{hours[2]:.3g})")
    if known:
        total = [sum(g.gpu_hours[k] for g in known) for k in range(3)]
        unknown = sum(g.to_run for g in groups if g.seconds is None)
        table.caption = (f"total: {total[0]:.3g} GPU-hours ({total[1]:.3g}-{total[2]:.3g}) for "
                         f"{sum(g.to_run for g in known)} cells" + (f"; {unknown} cells without an estimate" if unknown else "")
                         + ". GPU-hours = wall x GPUs per cell, from complete cells of the same signature.")
    return table

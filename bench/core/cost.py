"""What a cell costs: wall seconds and peak memory of each of its stages (``docs/protocols.md`` §6.1-6.2).

A cell opens one :class:`StageClock` (:func:`cell_clock`); code anywhere below marks its stages with
``with stage("load"):`` or the :func:`timed` decorator (``extract``, ``knn``, ``linear``, ``monitor``, ...). Only
stage boundaries are timed, each after a ``torch.cuda.synchronize()`` on CUDA, so no training step waits. The
outermost open stage owns the time: a stage opened inside another counts to it (the kNN of the online monitor
is ``monitor`` time), except a *carved* stage (``carve=True``: ``monitor``, ``checkpoint``), whose time is taken
out of the stage around it (``train`` time excludes its monitors and checkpoints). Time in no stage is ``other``,
so the stages add up to the total.

Peak memory per stage: ``torch.cuda.max_memory_allocated`` (reset when the stage opens) on CUDA; on the CPU the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``; elsewhere the
never-reset ``ru_maxrss``). Outside a cell's clock every stage is a no-op.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
GB = 1e9
STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

_ACTIVE: ContextVar[StageClock | None] = ContextVar("ssl_bench_stage_clock", default=None)


@dataclass
class _Frame:
    name: str
    start: float
    carved: float = 0.0  #: seconds of carved stages inside this one
    peak: int = 0  #: bytes, before the last reset by a carved stage inside


class StageClock:
    """Seconds and peak memory bytes per stage of one cell, plus those of earlier attempts (:meth:`resume`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self.started = time.perf_counter()
        self.earlier = 0.0  #: total seconds of earlier attempts, restored from a checkpoint
        self._open: list[_Frame] = []

    @property
    def memory(self) -> str:
        """What the peak memory figures measure on this device."""
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "peak resident set size"

    @contextlib.contextmanager
    def stage(self, name: str, *, carve: bool = False) -> Iterator[None]:
        if self._open and not carve:
            yield
            return
        self._sync()
        parent = self._open[-1] if self._open else None
        if parent is not None:
            parent.peak = max(parent.peak, self._peak())
        self._reset_peak()
        frame = _Frame(name, time.perf_counter())
        self._open.append(frame)
        try:
            yield
        finally:
            self._sync()
            self._open.pop()
            elapsed = time.perf_counter() - frame.start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - frame.carved
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), frame.peak, self._peak())
            if parent is not None:
                parent.carved += elapsed
                self._reset_peak()

    def snapshot(self) -> dict[str, Any]:
        """Seconds per stage (open stages up to now), the total since the clock started and peak bytes, all
        attempts together: what a checkpoint keeps and :meth:`resume` adds back."""
        now = time.perf_counter()
        seconds = dict(self.seconds)
        for i, frame in enumerate(self._open):
            inner = self._open[i + 1].start if i + 1 < len(self._open) else now
            seconds[frame.name] = seconds.get(frame.name, 0.0) + inner - frame.start - frame.carved
        return {"seconds": seconds, "total": self.earlier + now - self.started, "peak_bytes": dict(self.peak_bytes)}

    def resume(self, snapshot: dict[str, Any]) -> None:
        """Add an earlier attempt's :meth:`snapshot` (from the checkpoint this attempt resumes)."""
        for name, seconds in snapshot["seconds"].items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        for name, peak in snapshot["peak_bytes"].items():
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), peak)
        self.earlier += snapshot["total"]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _rss_peak()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                CLEAR_REFS.write_text("5")  # Linux: resets VmHWM to the current resident set


@contextlib.contextmanager
def cell_clock(device: torch.device) -> Iterator[StageClock]:
    """The clock of one cell: every :func:`stage` inside the body reports to it."""
    clock = StageClock(device)
    token = _ACTIVE.set(clock)
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)


def active_clock() -> StageClock | None:
    """The clock of the cell running in this context, if any."""
    return _ACTIVE.get()


def stage(name: str, *, carve: bool = False) -> contextlib.AbstractContextManager[None]:
    """Time the body as stage ``name`` of the active cell clock (a no-op without one)."""
    clock = _ACTIVE.get()
    return contextlib.nullcontext() if clock is None else clock.stage(name, carve=carve)


def timed(name: str, *, carve: bool = False) -> Callable[[F], F]:
    """Decorator: every call of the function is stage ``name`` (see :func:`stage`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with stage(name, carve=carve):
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


def cost_metrics(clock: StageClock, *, gpus: int, image_epochs: int | None = None) -> dict[str, float]:
    """The ``cost.*`` metrics of a cell from its clock (all attempts so far).

    ``cost.wall.<stage>`` and ``cost.wall.other`` add up to ``cost.wall.total`` (seconds);
    ``cost.gpu_seconds = cost.wall.total x gpus`` (the devices the cell held), ``cost.gpu_hours``;
    ``cost.peak_mem_gb.<stage>`` (1e9 bytes); ``cost.image_epochs`` = epochs x pre-training images, the work
    ``cost.wall.train`` paid for (what ``run --dry-run`` scales by; left out for a stage without pre-training, as
    detection).
    """
    snap = clock.snapshot()
    total = snap["total"]
    metrics = {f"cost.wall.{name}": seconds for name, seconds in sorted(snap["seconds"].items())}
    metrics["cost.wall.other"] = max(0.0, total - sum(snap["seconds"].values()))
    metrics["cost.wall.total"] = total
    metrics.update({f"cost.peak_mem_gb.{name}": peak / GB for name, peak in sorted(snap["peak_bytes"].items())})
    metrics.update({"cost.gpus": float(gpus), "cost.gpu_seconds": total * gpus, "cost.gpu_hours": total * gpus / 3600})
    if image_epochs is not None:
        metrics["cost.image_epochs"] = float(image_epochs)
    return metrics


def _rss_peak() -> int:
    """This process's peak resident set in bytes since the last reset (Linux), else since it started."""
    with contextlib.suppress(OSError):
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

"""The one vocabulary of a cell's state and of why a cell failed, shared by the queue (``status``), the MLflow runs
(the ``ssl_bench.status`` tag) and the reports (tables, leaderboard, plots)."""

from __future__ import annotations

from enum import StrEnum


class CellStatus(StrEnum):
    """Where a cell stands. The queue knows them all; a run's MLflow tag is RUNNING, then COMPLETE, FAILED or PRUNED;
    the reports add MISSING for a cell of the suite with no run."""

    NOT_QUEUED = "not queued"
    WAITING = "waiting"
    RETRYING = "retrying"  # failed, queued again
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    PRUNED = "pruned"
    MISSING = "missing"


#: the states a run ends in
FINISHED = (CellStatus.COMPLETE, CellStatus.FAILED, CellStatus.PRUNED)
#: the states of a cell that a worker will still run
PENDING = (CellStatus.WAITING, CellStatus.RUNNING, CellStatus.RETRYING)


class FailureKind(StrEnum):
    """Why a cell failed: the typed part of its reason, recorded as ``fail_kind`` beside the text."""

    DIVERGED = "diverged"  # a NaN or infinite training loss
    OUT_OF_MEMORY = "out of memory"
    MISSING_DATA = "missing data"
    CONFIG = "config"  # any other mistake in the suite a user can fix
    PREEMPTED = "preempted"  # SIGTERM; the cell resumes from its checkpoint
    EXCEPTION = "exception"  # a bug or a crash, traceback in the run directory
    SOURCE = "source cell"  # a detection cell whose pre-training cell failed or was pruned

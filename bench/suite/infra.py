"""Where a suite's results go and how its workers start: the MLflow tracking store, the Optuna storage (the queue),
the cells' directories and the launcher (local processes, a Slurm array, or a printed command)."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bench.schema import FROM_YAML, ConfigModel, PathField


#: database backends an Optuna storage URL may name
STORAGE_BACKENDS = frozenset({"sqlite", "postgresql", "mysql"})


#: URI schemes MLflow tracking accepts here (anything without a scheme is a path)
TRACKING_SCHEMES = frozenset({"file", "sqlite", "postgresql", "mysql", "http", "https", "databricks"})


class TrackingConfig(ConfigModel):
    """Where MLflow records the suite's runs."""

    mlflow_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else an SQLite file under results/")
    experiment: str | None = Field(None, description="MLflow experiment (null: the suite name)")

    @field_validator("mlflow_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", v or "")
        if scheme and scheme[1].split("+")[0].lower() not in TRACKING_SCHEMES:
            raise ValueError(f"unsupported URI scheme '{scheme[1]}'; give a path such as results/mlruns or a URI with "
                             f"scheme {', '.join(sorted(TRACKING_SCHEMES))}")
        return v


class StorageConfig(ConfigModel):
    """The Optuna storage that is the suite's work queue, and the worker's liveness settings."""

    url: str | None = Field(None, description="SQLAlchemy URL (null: an SQLite file under results/)")
    runs_dir: PathField = Field(Path("results/cells"), description="one directory per cell: checkpoints, curves, reports")
    heartbeat_interval: int = Field(60, ge=1, description="seconds between a running cell's heartbeats")
    grace_period: int = Field(180, ge=1, description="seconds without a heartbeat after which a cell counts as dead")
    retries: int = Field(2, ge=0, description="times a dead or failed cell is queued again")

    @field_validator("url")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            backend = make_url(v).get_backend_name()
        except (ArgumentError, ValueError):
            backend = None
        if backend not in STORAGE_BACKENDS:
            raise ValueError("not a database URL of sqlite, postgresql or mysql; e.g. sqlite:///results/optuna.db "
                             "or postgresql+psycopg2://user:password@host:5432/db")
        return v

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> StorageConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period} s) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live cells count as dead")
        return self


class SlurmConfig(ConfigModel):
    """One Slurm job array of workers (submitted with submitit)."""

    partition: str | None = Field(None, description="Slurm partition (null: the cluster's default)")
    gres: str | None = Field(None, description="generic resources per job, e.g. gpu:1")
    time_min: int = Field(240, ge=1, description="time limit of each job in minutes")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores per job")
    mem_gb: int = Field(64, ge=1, description="memory per job in GB")
    account: str | None = Field(None, description="Slurm account to charge")
    qos: str | None = Field(None, description="Slurm quality of service")
    array_parallelism: int = Field(64, ge=1, description="jobs of the array running at once")
    folder: PathField = Field(Path("results/slurm"), description="submitit's logs and pickles")


class Launcher(StrEnum):
    """How workers are started (``launcher.name``, ``--launcher``); ``bench.orchestrate.launch.LAUNCH`` starts each."""

    LOCAL = "local"  #: local worker processes, one per visible GPU (group) or CPU, watched until they exit
    SLURM = "slurm"  #: a Slurm job array of workers (submitit)
    PRINT = "print"  #: queue only, and print the worker command for any other cluster


class LauncherConfig(ConfigModel):
    """How workers are started."""

    name: Annotated[Launcher, FROM_YAML] = Field(Launcher.LOCAL, description="local processes, a Slurm array, or print the command")
    workers: int | None = Field(None, ge=1, description="number of workers (null: one per gpus_per_cell visible GPUs, else one)")
    gpus_per_cell: int = Field(1, ge=1, description="processes (GPUs on CUDA) that train one cell together with "
                               "torch.distributed; batch_size stays the global batch")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="settings of the slurm launcher")

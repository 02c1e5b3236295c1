"""The Slurm launcher: one submitit job per worker, requeued on preemption or time-out.

Each job runs ``work`` on the suite's study; when Slurm preempts it, the engine's SIGTERM checkpoint and the
study's retry put the cell back in the queue, and submitit requeues the job (``Checkpointable``). Tests drive
the same path with submitit's local executor (``cluster="local"``).
"""

from __future__ import annotations

from dataclasses import asdict

import submitit

from bench.suite.infra import SlurmConfig


class WorkerJob(submitit.helpers.Checkpointable):
    """A picklable worker: the storage URL and study name are all it needs."""

    def __init__(self, storage_url: str, study_name: str):
        self.storage_url, self.study_name = storage_url, study_name

    def __call__(self) -> dict[str, list[str]]:
        from bench.orchestrate.worker import work

        return asdict(work(self.storage_url, self.study_name))


def launch_slurm(storage_url: str, study_name: str, cfg: SlurmConfig, workers: int, *,
                 cluster: str | None = None) -> list[submitit.Job]:
    """Submit ``workers`` worker jobs as one array (``cluster="local"`` runs them as local processes)."""
    executor = submitit.AutoExecutor(folder=cfg.folder, cluster=cluster)
    params = {"name": f"ssl-bench-{study_name}", "timeout_min": cfg.time_min, "cpus_per_task": cfg.cpus_per_task,
              "mem_gb": cfg.mem_gb, "slurm_array_parallelism": cfg.array_parallelism}
    for key in ("partition", "gres", "account", "qos"):
        if getattr(cfg, key) is not None:
            params[f"slurm_{key}"] = getattr(cfg, key)
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(WorkerJob(storage_url, study_name)) for _ in range(workers)]
    return jobs

"""A cell's reproducibility fingerprint (``docs/protocols.md`` §5): the code, packages, hardware, settings and data it ran on.

The record, written as ``fingerprint.json`` in the run directory (and on the MLflow run, with ``diff.patch`` when
the code was dirty) and kept in ``report.json`` under ``fingerprint``, has five groups of flat fields:

- ``code``: ``git.commit``, ``git.branch``, ``git.dirty``, ``git.diff_sha256`` (sha256 of ``git diff HEAD --binary``
  followed by the path and content sha256 of every untracked, not ignored file), ``git.untracked`` (their count),
  ``ssl_bench.version``;
- ``packages``: ``python``, ``torch``, ``torchvision``, ``cuda`` (the CUDA torch was built with), ``cudnn``, ``numpy``,
  ``timm`` (when installed);
- ``hardware``: ``device`` (the GPU's name, or the CPU model), ``cuda_devices``, ``cpus``, ``host``;
- ``determinism``: ``seed``, the cell's torch settings (``TorchSettings.as_record``), ``precision``, ``compile``,
  ``channels_last``, ``sync_bn``;
- ``data``: ``dataset``, ``config_sha256`` (the dataset config without its root), ``sha256`` and ``splits.<name>``
  (``bench.data.content_hash``).

``id`` is the sha256 of the canonical JSON of the record without the fields in ``VOLATILE`` (where, not what, ran).
What git cannot tell (no ``git``, no repository) is ``"unknown"``. Code, packages and device are read once per
process; the data hash once per dataset root (cached on disk).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

import bench
from bench.config.overrides import flatten
from bench.config.run import RunConfig
from bench.core.files import write_atomic
from bench.data.content_hash import dataset_hashes, file_sha256
from bench.data.registry import DatasetSplits

UNKNOWN = "unknown"
FINGERPRINT_FILE, DIFF_FILE = "fingerprint.json", "diff.patch"
#: the MLflow tag of the fingerprint's id; every field is a tag ``fingerprint.<group>.<field>``
ID_TAG, TAG_PREFIX = "ssl_bench.fingerprint", "fingerprint."
#: fields that say where or under which name a cell ran, not what ran: left out of the id
VOLATILE = frozenset({"code.git.branch", "hardware.host", "hardware.cpus", "hardware.cuda_devices"})
#: optional packages recorded when installed
OPTIONAL_PACKAGES = ("timm",)


@dataclass(frozen=True)
class CodeState:
    """The git state of the repository holding the code, and its uncommitted changes."""

    commit: str
    branch: str
    dirty: bool | str
    diff_sha256: str
    untracked: int | str
    diff: bytes = b""

    def record(self) -> dict[str, Any]:
        return {"git.commit": self.commit, "git.branch": self.branch, "git.dirty": self.dirty,
                "git.diff_sha256": self.diff_sha256, "git.untracked": self.untracked, "ssl_bench.version": bench.__version__}


def _git(repo: Path, *args: str) -> bytes | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def code_state(repo: Path) -> CodeState:
    """The git state of the repository around ``repo``; fields git cannot tell (no git, no commit) are "unknown"."""
    top, commit = _git(repo, "rev-parse", "--show-toplevel"), _git(repo, "rev-parse", "HEAD")
    if top is None or commit is None:
        return CodeState(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    root = Path(top.decode().strip())
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    known = CodeState(commit.decode().strip(), branch.decode().strip() if branch else UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    diff = _git(root, "diff", "HEAD", "--binary")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    if diff is None or untracked is None:
        return known
    paths = sorted(p for p in untracked.decode().split("\0") if p)
    digest = hashlib.sha256(diff)
    for path in paths:
        digest.update(f"\0{path}\0{_content_sha256(root / path)}".encode())
    return replace(known, dirty=bool(diff or paths), diff_sha256=digest.hexdigest(), untracked=len(paths), diff=diff)


def _content_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:  # a link to a folder, a file removed meanwhile
        return UNKNOWN


@functools.cache
def current_code() -> CodeState:
    """The state of the code this process runs (read once per process)."""
    return code_state(Path(bench.__file__).parent)


def git_commit() -> str:
    """The commit checked out in the repository holding the bench package, or "unknown" outside git."""
    return current_code().commit


@functools.cache
def package_versions() -> dict[str, str]:
    """Versions of python, torch (and the CUDA and cuDNN it uses), torchvision, numpy and the optional packages."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda),
                "cudnn": str(torch.backends.cudnn.version()), "torchvision": _version("torchvision"), "numpy": _version("numpy")}
    for name in OPTIONAL_PACKAGES:
        found = _version(name)
        if found != UNKNOWN:
            versions[name] = found
    return versions


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


def device_model(device: torch.device) -> str:
    """The GPU's name, or the CPU model."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def fingerprint(cfg: RunConfig, splits: DatasetSplits, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The fingerprint record of a cell (see the module docstring), ``settings`` its ``TorchSettings.as_record()``."""
    dataset = cfg.dataset.model_dump(mode="json", exclude={"root"})
    record: dict[str, Any] = {
        "code": current_code().record(),
        "packages": package_versions(),
        "hardware": {"device": device_model(device), "cuda_devices": torch.cuda.device_count(), "cpus": os.cpu_count(),
                     "host": socket.gethostname()},
        "determinism": {"seed": cfg.seed, **settings, "precision": cfg.train.precision, "compile": cfg.train.compile,
                        "channels_last": cfg.train.channels_last, "sync_bn": cfg.train.sync_bn},
        "data": {"dataset": cfg.dataset.name, "config_sha256": _sha256_json(dataset),
                 **dataset_hashes(splits, cfg.train.cache_dir)},
    }
    record["id"] = fingerprint_id(record)
    return record


def fingerprint_id(record: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the record's fields outside ``VOLATILE``."""
    kept = {key: value for key, value in flatten({k: v for k, v in record.items() if k != "id"}).items() if key not in VOLATILE}
    return _sha256_json(kept)


def write_fingerprint(record: dict[str, Any], run_dir: Path) -> None:
    """``fingerprint.json`` in ``run_dir``, and ``diff.patch`` (the uncommitted changes) when the code is dirty."""
    write_atomic(run_dir / FINGERPRINT_FILE, json.dumps(record, indent=2))
    diff = current_code().diff
    if diff:
        write_atomic(run_dir / DIFF_FILE, diff)
    else:
        (run_dir / DIFF_FILE).unlink(missing_ok=True)


def fingerprint_tags(record: dict[str, Any]) -> dict[str, str]:
    """The MLflow tags of a record: ``ssl_bench.fingerprint`` (the id) and ``fingerprint.<group>.<field>``."""
    fields = flatten({k: v for k, v in record.items() if k != "id"}, TAG_PREFIX)
    return {ID_TAG: record["id"], **{k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}}


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

"""Torch's process-wide settings, scoped to one cell.

A worker runs many cells in one process, so whatever a cell sets globally (deterministic algorithms, cuDNN
flags, TF32, intra-op threads, default dtype, warnings filters, random number generators) is set here, on
entering :func:`torch_scope`, and restored on leaving it. Nothing else in ``bench/`` changes these settings.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

#: cuBLAS needs a fixed workspace for deterministic results on CUDA (see torch.use_deterministic_algorithms)
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


@dataclass(frozen=True)
class TorchSettings:
    """The global switches a cell may change; ``current()`` reads them, ``apply()`` sets them."""

    threads: int
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    cudnn_tf32: bool
    matmul_tf32: bool
    default_dtype: torch.dtype
    cublas_workspace: str | None

    @classmethod
    def current(cls) -> TorchSettings:
        return cls(
            threads=torch.get_num_threads(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            default_dtype=torch.get_default_dtype(),
            cublas_workspace=os.environ.get(CUBLAS_WORKSPACE),
        )

    def apply(self) -> None:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32  # also sets torch's float32 matmul precision
        torch.set_default_dtype(self.default_dtype)
        if self.cublas_workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = self.cublas_workspace

    def as_record(self) -> dict[str, object]:
        """The settings as plain values, for a cell's report and fingerprint."""
        return {"threads": self.threads, "deterministic": self.deterministic, "cudnn_benchmark": self.cudnn_benchmark,
                "cudnn_deterministic": self.cudnn_deterministic, "cudnn_tf32": self.cudnn_tf32,
                "matmul_tf32": self.matmul_tf32,
                "default_dtype": str(self.default_dtype).removeprefix("torch.")}


def cell_settings(*, threads: int | None, deterministic: bool, base: TorchSettings) -> TorchSettings:
    """What a cell runs under: bitwise-reproducible algorithms, or the fast ones (cuDNN autotuning, TF32)."""
    fast = not deterministic
    return TorchSettings(
        threads=threads or base.threads,
        deterministic=deterministic,
        deterministic_warn_only=True,
        cudnn_benchmark=fast,
        cudnn_deterministic=deterministic,
        cudnn_tf32=fast,
        matmul_tf32=fast,
        default_dtype=torch.float32,
        cublas_workspace=":4096:8" if deterministic else base.cublas_workspace,
    )


@dataclass(frozen=True)
class _RandomState:
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    python: object
    numpy: dict

    @classmethod
    def current(cls) -> _RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, random.getstate(), np.random.get_state(legacy=False))

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


@contextlib.contextmanager
def torch_scope(*, threads: int | None = None, deterministic: bool = False, seed: int | None = None) -> Iterator[TorchSettings]:
    """Run the body under a cell's torch settings (and seeded generators), restoring every global afterwards."""
    before = TorchSettings.current()
    rng = _RandomState.current()
    inside = cell_settings(threads=threads, deterministic=deterministic, base=before)
    with warnings.catch_warnings():
        try:
            inside.apply()
            if seed is not None:
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
            yield inside
        finally:
            before.apply()
            rng.restore()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU generator seeded with ``seed`` for the body (e.g. a model's initialisation), then as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def threads_scope(threads: int) -> Iterator[None]:
    """Only the intra-op thread count, e.g. a share of this process's threads for one of several ranks."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

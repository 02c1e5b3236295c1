"""Torch's global settings are scoped to a cell: set on entry, restored on exit, nested scopes included."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch

from bench.core.torch_state import TorchSettings, threads_scope, torch_scope


def test_a_deterministic_scope_sets_every_switch_and_restores_them():
    before = TorchSettings.current()
    with torch_scope(threads=2, deterministic=True) as inside:
        assert TorchSettings.current() == inside
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_num_threads() == 2
        torch.set_default_dtype(torch.float64)  # what a cell might do by mistake
        warnings.simplefilter("ignore")
        with torch_scope(deterministic=False):
            assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
            assert torch.get_num_threads() == 2  # inherited from the enclosing scope
        assert torch.are_deterministic_algorithms_enabled() and torch.get_default_dtype() == torch.float64
    assert TorchSettings.current() == before
    assert torch.get_default_dtype() == torch.float32
    assert warnings.filters[:1] != [("ignore", None, Warning, None, 0)]


def test_a_seeded_scope_restores_every_generator():
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    with torch_scope(seed=0):
        first = torch.rand(3)
    with torch_scope(seed=0):
        assert torch.equal(torch.rand(3), first)  # the same seed gives the same stream
        random.random(), np.random.rand()
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


def test_threads_scope_restores_the_thread_count():
    before = torch.get_num_threads()
    with threads_scope(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before

"""Every registered method runs through the real engine and evaluation: suites/smoke.yaml, one cell each."""

import math
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.suite.suite import expand_suite, load_suite
from bench.data.registry import DatasetConfig, load_dataset
from bench.methods import all_methods, baseline_methods
from bench.runner import run
from bench.data.loader import iter_batches
from bench.train.engine import setup
from method_checks import reassigned

SMOKE = Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"


@pytest.fixture(scope="module")
def cells():
    return {cell.axes["method"]: cell for cell in expand_suite(load_suite(SMOKE))}


def test_smoke_suite_has_one_cell_per_registered_method(cells):
    assert sorted(cells) == sorted([*all_methods(), *baseline_methods()])  # and the suite's two baselines


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DatasetConfig(name="shapes", n_train=128, n_test=40))


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_method_trains_and_evaluates(method, cells, splits, tmp_path):
    cfg = cells[method].config.model_copy(deep=True)
    cfg.train.cache_dir = tmp_path / "cache"
    report = run(cfg, tmp_path, splits=splits)
    assert report.status == "complete"
    assert all(math.isfinite(h.loss) for h in report.history)
    assert 0 <= report.metrics["knn20.top1"] <= 1 and 0 <= report.history[-1].monitor.knn20_top1 <= 1
    assert (tmp_path / "model.pt").exists()


class HostReads(TorchDispatchMode):
    """Records every read of a tensor's value by the host (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``): each is
    ``aten._local_scalar_dense``, a device sync on CUDA."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


#: method options that switch on a per-step path the smoke cells leave off: SwAV's queue, full from the second step
STEP_PATHS = {"swav": {"queue_length": "batch"}}


@pytest.mark.parametrize("method, path", [(m, False) for m in sorted(all_methods())] + [(m, True) for m in STEP_PATHS],
                         ids=lambda v: v if isinstance(v, str) else ("path" if v else ""))
def test_a_training_step_of_the_method_never_reads_a_tensor_on_the_host(method, path, cells, splits, tmp_path):
    """The method's forward (its loss and logs) and its step hook stay on the device: the engine reads them at its log
    interval only (DESIGN: no host sync in the training step). What the hook needs comes in the step's outputs, not in
    attributes set on the module."""
    cfg = cells[method].config.model_copy(deep=True)
    if path:
        options = {k: cfg.batch_size if v == "batch" else v for k, v in STEP_PATHS[method].items()}
        cfg.method = cfg.method.model_copy(update=options)
    cfg.train.cache_dir = tmp_path / "cache"
    loop = setup(cfg, tmp_path, splits, torch.device("cpu"))
    images, labels, index = next(iter_batches(loop.pretrain, cfg.batch_size, loop.device, drop_last=True))
    kept = dict(vars(loop.method))
    for step in range(2):  # the second step too: queues, EMA teachers and prototypes are filled by then
        views = loop.maker(images, labels, index, torch.Generator().manual_seed(step))
        with HostReads() as host:
            out = loop.method(views, step, loop.total_steps)
        out.loss.backward()
        loop.optimizer.step()
        with host:
            loop.method.on_step_end(out, step, loop.total_steps)
        assert host.reads == 0, f"{method} reads a tensor on the host {host.reads} time(s) in step {step}"
        assert reassigned(loop.method, kept) == [], f"{method} keeps step state on the module instead of its outputs"

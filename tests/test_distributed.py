"""Training with several processes (gloo on the CPU, 2 ranks): the loss and gradients of one process.

Each rank holds a copy of the method (same initial weights) and its half of the same global batch of views;
after the backward pass and the gradient averaging, the loss (mean over the ranks, as the engine logs it),
every gradient and the state after ``on_step_end`` (EMA targets, queues, running statistics) must equal the
one-process computation on the whole batch, in float64. The backbone has batch norm, synchronised over the
ranks (SyncBatchNorm); without it the same check fails, which shows the check can fail.

The engine's side: a run preempted by a SIGTERM that only rank 0 receives stops on both ranks with a
mid-epoch checkpoint and resumes to the weights of an uninterrupted run; a suite cell with gpus_per_cell=2
trains like one process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from bench.cli import main
from bench.config import resolve_run_config
from bench.suite.suite import expand_suite, load_suite
from bench.data.views import Views
from bench.methods import method_class
from bench.models.backbones import BackboneConfig, build_backbone
from bench.orchestrate.queue import default_storage_url
from bench.orchestrate.worker import work
from bench.runner import METRICS
from bench.train.checkpoint import CHECKPOINT
from bench.core.collectives import all_reduce, is_distributed, rank, world_size
from bench.train.distributed import average_gradients, convert_sync_batch_norm, free_port, process_group
from bench.core.signals import Preempted
from bench.train.engine import MODEL, train
from bench.train.records import EpochRecord

WORLD = 2
BATCH = 8  # global batch of the method checks
SIZE = 16

#: method -> (params, crop sizes); every head is tiny
CASES: dict[str, tuple[dict, list[int]]] = {
    "simclr": ({"projector": "16-8"}, [SIZE, SIZE]),
    "mocov3": ({"projector": "16-8", "predictor": "16-8"}, [SIZE, SIZE]),
    "barlow_twins": ({"projector": "16-8"}, [SIZE, SIZE]),
    "vicreg": ({"projector": "16-8"}, [SIZE, SIZE]),
    "corinfomax": ({"projector": "16-8", "projector_bn": True}, [SIZE, SIZE]),
    "mvmr": ({"projector": "16-8", "terms": ["l1", "l2"], "dcor_global": True}, [SIZE]),
    "swav": ({"projector": "16-8", "num_prototypes": 6, "freeze_prototypes_steps": 0}, [SIZE, SIZE, 8, 8]),
    "mveb": ({"projector": "16-8"}, [SIZE, SIZE, 8]),
    "mocov2": ({"projector": "16-8", "queue_size": 12, "bn_splits": 1}, [SIZE, SIZE]),
    "byol": ({"projector": "16-8", "predictor": "16-8"}, [SIZE, SIZE]),
    "dino": ({"projector": "16-8", "out_dim": 6}, [SIZE, SIZE, 8, 8]),
    "mae": ({"decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2}, [SIZE]),
}
#: the methods whose case trains a ViT (one 8-d block, patch 4: 16 patches); the others a small CNN
VIT = BackboneConfig(name="vit", embed_dim=8, depth=1, num_heads=2, patch_size=4, image_size=SIZE)
PER_PROCESS_BN = "vicreg without SyncBN"


def _views(sizes: list[int]) -> Views:
    """This rank's contiguous share of a fixed global batch of float64 views (all of it without a group)."""
    g = torch.Generator().manual_seed(1)
    crops = [torch.randn(BATCH, 3, s, s, generator=g, dtype=torch.float64) for s in sizes]
    clean = torch.randn(BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    share = slice(rank() * BATCH // world_size(), (rank() + 1) * BATCH // world_size())
    index = torch.arange(BATCH)
    return Views([c[share] for c in crops], clean[share], torch.zeros(BATCH, dtype=torch.long)[share], index[share])


def one_step(name: str, sync_bn: bool) -> dict:
    """Loss, gradients (averaged over the ranks) and state after ``on_step_end`` of one step of method ``name``."""
    params, sizes = CASES[name]
    cls = method_class(name)
    torch.manual_seed(0)
    backbone = build_backbone(VIT if cls.needs_vit else BackboneConfig(width=4), 3)
    method = cls(backbone, cls.Params(**params), num_classes=2, image_shape=(3, SIZE, SIZE))
    method = method.double()
    if sync_bn:
        convert_sync_batch_norm(method)
    out = method(_views(sizes), step=0, total_steps=10)
    out.loss.backward()
    if is_distributed():
        average_gradients(method.parameters())
    method.on_step_end(out, 0, 10)
    grads = {k: p.grad for k, p in method.named_parameters() if p.grad is not None}
    return {"loss": all_reduce(out.loss.detach(), "mean"), "grads": grads, "state": method.state_dict()}


#: 4 steps per epoch with the random "simclr" views, so each rank's view stream matters on resume
RUN = {
    "method": {"name": "simclr", "projector": "16-8"}, "dataset": {"name": "shapes", "n_train": 64, "n_test": 16},
    "backbone": {"name": "small_cnn", "width": 4}, "epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05},
    "train": {"progress": False, "sync_bn": True, "deterministic": True, "log_every": 1},
}


def _sigterm_after_epoch_1(record: EpochRecord) -> None:
    if record.epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _preempt_and_resume(r: int, base: Path) -> None:
    """Train RUN uninterrupted; then again with a SIGTERM to rank 0 alone after epoch 1, and resume it."""
    cfg = resolve_run_config(RUN)
    train(cfg, base / "uninterrupted")
    try:
        train(cfg, base / "resumed", on_epoch=_sigterm_after_epoch_1 if r == 0 else None)
    except Preempted:
        (base / f"preempted-{r}").touch()
    torch.distributed.barrier()  # rank 0 has written the checkpoint that both ranks resume from
    if r == 0:
        checkpoint = torch.load(base / "resumed" / CHECKPOINT, weights_only=True)
        (base / "preempted-at.json").write_text(json.dumps([checkpoint["epoch"], checkpoint["batch"]]))
    train(cfg, base / "resumed")


def _rank(r: int, port: int, base: Path) -> None:
    torch.set_num_threads(1)
    with process_group(r, WORLD, port, "cpu"):
        results = {name: one_step(name, sync_bn=True) for name in CASES}
        results[PER_PROCESS_BN] = one_step("vicreg", sync_bn=False)
        _preempt_and_resume(r, base)
    if r == 0:
        torch.save(results, base / "steps.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """Everything that runs on 2 gloo ranks, once for the module: the method steps and the preempted run."""
    base = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(free_port(), base), nprocs=WORLD)
    return base


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / MODEL, weights_only=True)["model"]


def _assert_same(got: dict, want: dict) -> None:
    torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    assert got["grads"].keys() == want["grads"].keys()
    for k in want["grads"]:
        torch.testing.assert_close(got["grads"][k], want["grads"][k], rtol=1e-5, atol=1e-6, msg=f"gradient of {k}")
    assert got["state"].keys() == want["state"].keys()
    for k in want["state"]:
        torch.testing.assert_close(got["state"][k], want["state"][k], rtol=1e-5, atol=1e-6, msg=f"state {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_the_one_process_loss_gradients_and_state(two_processes, name):
    _assert_same(torch.load(two_processes / "steps.pt", weights_only=False)[name], one_step(name, sync_bn=False))


def test_per_process_batch_norm_differs_from_the_global_batch(two_processes):
    with pytest.raises(AssertionError):
        _assert_same(torch.load(two_processes / "steps.pt", weights_only=False)[PER_PROCESS_BN], one_step("vicreg", sync_bn=False))


def test_sigterm_to_rank_0_stops_both_ranks_mid_epoch_and_the_run_resumes_exactly(two_processes):
    assert (two_processes / "preempted-0").exists() and (two_processes / "preempted-1").exists()
    assert json.loads((two_processes / "preempted-at.json").read_text()) == [1, 1]  # epoch 2, after its first step
    want, got = _weights(two_processes / "uninterrupted"), _weights(two_processes / "resumed")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


IDENTITY = {"scale": [1, 1], "ratio": [1, 1], "flip_p": 0, "jitter_p": 0, "gray_p": 0}


def test_a_two_process_cell_trains_like_one_process(tmp_path, monkeypatch):
    """A suite cell with gpus_per_cell=2 (the worker is rank 0, one spawned peer) against one process.

    With views that do not depend on the generator and SyncBN, both runs see the same global batches. One
    step per epoch: the first epoch's loss is the first step's, equal up to float32 rounding; later steps
    agree up to that rounding grown by training.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = {
        "name": "ddp",
        "defaults": {
            "method": {"name": "simclr", "projector": "16-8"}, "augment": [IDENTITY, IDENTITY],
            "dataset": {"name": "shapes", "n_train": 32, "n_test": 32}, "backbone": {"name": "small_cnn", "width": 4},
            "epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.01, "lr_scaling": "none"},
            "schedule": {"warmup_epochs": 0}, "train": {"progress": False, "sync_bn": True, "deterministic": True},
        },
        "evaluations": {"probes": [], "knn_k": [20]},
        "launcher": {"gpus_per_cell": 2},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--launcher", "print"]) == 0
    summary = work(default_storage_url(), "ddp")
    (cell,) = expand_suite(load_suite(path))
    assert summary.complete == [cell.id] and not summary.failed
    cell_dir = Path("results/cells") / cell.id
    history = json.loads((cell_dir / METRICS).read_text())["history"]
    assert len(torch.load(cell_dir / CHECKPOINT, weights_only=True)["peer_generators"]) == 1  # rank 1's view stream

    reference = train(cell.config, tmp_path / "one_process")
    assert [r.keys() for r in history] == [r.as_dict().keys() for r in reference.history]
    assert history[0]["loss"] == pytest.approx(reference.history[0].loss, rel=1e-5)
    assert history[1]["loss"] == pytest.approx(reference.history[1].loss, rel=1e-4)
    weights, want = _weights(cell_dir), _weights(tmp_path / "one_process")
    assert weights.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(weights[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs")

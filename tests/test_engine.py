"""The training engine: exact resume after SIGKILL, SIGTERM checkpoints, the non-finite-loss guard."""

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.config import resolve_run_config
from bench.errors import DivergedError
from bench.train.checkpoint import CHECKPOINT
from bench.core.signals import Preempted
from bench.train.engine import MODEL, train

TINY = [
    "method=simclr", "method.projector=32-16", "dataset=shapes", "dataset.n_train=1024", "dataset.n_test=64",
    "backbone.width=8", "batch_size=32", "epochs=4", "optimizer.name=sgd", "optimizer.lr=0.05",
    "train.deterministic=true", "train.threads=1", "train.checkpoint_every=1", "train.progress=false",
    "eval.probes=[logreg, {name: linear, epochs: 2}]",
]


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY + list(extra) for a in ("--set", s)]
    return [sys.executable, "-m", "bench.cli", "train", "--out", str(run_dir), *sets]


def _env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / MODEL, weights_only=True)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference run."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_cmd(run_dir), check=True, env=_env(), capture_output=True)
    return run_dir


def _await_checkpoint(proc: subprocess.Popen, run_dir: Path, epoch: int) -> float:
    """Poll until the run has checkpointed ``epoch``; the time it was seen. Fails if the run ends first."""
    seen = None
    while proc.poll() is None:
        path = run_dir / CHECKPOINT
        with contextlib.suppress(FileNotFoundError):
            stamp = path.stat().st_ino, path.stat().st_mtime_ns  # atomic_save replaces the file: a new inode
            if stamp != seen:
                seen = stamp
                if torch.load(path, weights_only=True)["epoch"] >= epoch:
                    return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"the run ended (exit {proc.returncode}) before its epoch-{epoch} checkpoint")


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_at_a_random_point_then_resume_gives_the_same_weights(uninterrupted, tmp_path, trial):
    """SIGKILL at a random point of the third of 4 epochs, timed by the run's own checkpoints (not by a clock
    estimate that load can upset): a uniform delay over the second epoch's observed length after its checkpoint,
    so the kill can also land in the third epoch's checkpoint write."""
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = _await_checkpoint(proc, run_dir, 1)
    second = _await_checkpoint(proc, run_dir, 2)
    time.sleep(random.uniform(0.0, second - first))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / MODEL).exists(), "the run finished before it could be killed; make it longer"
    done = subprocess.run(_train_cmd(run_dir), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(run_dir.glob(".*.tmp"))
    _assert_same_weights(_final_weights(uninterrupted), _final_weights(run_dir))


def test_sigterm_exits_with_code_4_and_the_same_command_resumes(uninterrupted, tmp_path):
    run_dir = tmp_path / "terminated"
    proc = subprocess.Popen(_train_cmd(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _await_checkpoint(proc, run_dir, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 4, err
    assert "run the same command again to resume" in err
    done = subprocess.run(_train_cmd(run_dir), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_weights(_final_weights(uninterrupted), _final_weights(run_dir))


def test_sigterm_mid_epoch_checkpoints_that_step_and_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
    from bench.config import apply_overrides
    from bench.methods.simclr import SimCLR

    reference = uninterrupted
    cfg = resolve_run_config(apply_overrides({}, TINY))
    original = SimCLR.update_state

    def terminate_at_step_40(self, outputs, step, total_steps):
        original(self, outputs, step, total_steps)
        if step == 40:  # epoch 2 (32 steps per epoch), batch 9
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SimCLR, "update_state", terminate_at_step_40)
    with pytest.raises(Preempted, match="SIGTERM at epoch 2 step 41"):
        train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 9)
    monkeypatch.undo()
    train(cfg, tmp_path)
    _assert_same_weights(_final_weights(reference), _final_weights(tmp_path))


def test_non_finite_loss_stops_the_run_with_its_epoch_and_step(tmp_path):
    from bench.config import apply_overrides

    cfg = resolve_run_config(apply_overrides({}, TINY + ["optimizer.lr=1e30", "epochs=2", "train.log_every=1"]))
    with pytest.raises(DivergedError, match=r"diverged at epoch \d+ step \d+") as err:
        train(cfg, tmp_path)
    assert err.value.step >= 1 and err.value.epoch >= 1
    assert not (tmp_path / MODEL).exists()


def test_cli_reports_divergence_with_exit_code_3(tmp_path):
    done = subprocess.run(_train_cmd(tmp_path, "optimizer.lr=1e30", "epochs=1", "train.log_every=1"),
                          env=_env(), capture_output=True, text=True)
    assert done.returncode == 3
    assert "diverged at epoch 1 step" in done.stderr and "optimizer.lr" in done.stderr


def test_history_records_loss_lr_and_throughput(tmp_path):
    from bench.config import apply_overrides

    cfg = resolve_run_config(apply_overrides({}, TINY + ["epochs=2", "train.knn_every=1"]))
    result = train(cfg, tmp_path)
    assert [h.epoch for h in result.history] == [1, 2]
    for h in result.history:
        assert h.images_per_s > 0 and h.lr > 0 and torch.isfinite(torch.tensor(h.loss))
        assert 0 <= h.monitor.knn20_top1 <= 1


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    from bench.config import apply_overrides
    from bench.errors import ConfigError

    cfg = resolve_run_config(apply_overrides({}, TINY + ["epochs=1"]))
    train(cfg, tmp_path)
    other = resolve_run_config(apply_overrides({}, TINY + ["epochs=1", "optimizer.lr=0.01"]))
    with pytest.raises(ConfigError, match="different config"):
        train(other, tmp_path)

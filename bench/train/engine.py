"""The training loop of one run.

Data stays on the device as uint8 and is augmented there; metrics are reduced on the device and
fetched once per log interval, so the loop does not wait on the host. A run resumes from its own
checkpoint: the data order and the augmentation randomness of an epoch are pure functions of
(seed, epoch), so a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from bench.config.run import RunConfig, config_id, resolve_run_config
from bench.core.device import pick_device
from bench.core.cost import StageClock, active_clock, stage, timed
from bench.core.signals import Preempted, SigtermFlag
from bench.core.torch_state import seeded, torch_scope
from bench.data.loader import epoch_permutation, iter_batches
from bench.data.registry import DatasetSplits, Split, load_dataset
from bench.data.views import ViewMaker, Views, build_recipe
from bench.errors import ConfigError, DivergedError
from bench.eval.diagnostics import effective_rank
from bench.eval.features import extract_features
from bench.eval.fractions import class_balanced_subset
from bench.eval.knn import knn_eval
from bench.methods import Method, method_class
from bench.methods.base import StepOutput
from bench.models.backbones import build_backbone
from bench.train.checkpoint import atomic_save, restore_state, save_state
from bench.core.collectives import all_reduce, any_rank, gather_with_grad, is_main, rank, world_size
from bench.train.distributed import convert_sync_batch_norm, rank_share
from bench.train.optim import build_optimizer, optimisation_step, schedule_groups
from bench.train.progress import progress_bar
from bench.train.records import EpochRecord, Monitor

MODEL = "model.pt"
#: the final metric of the last epoch's RankMe monitor: a label-free search objective
RANKME_METRIC = "val.rankme"


@dataclass
class TrainResult:
    method: Method
    splits: DatasetSplits
    device: torch.device
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: float = 0.0  #: epochs (fractional mid-epoch) restored from a checkpoint; 0 for a fresh run


def cell_scope(cfg: RunConfig):
    """The cell's torch settings (threads, determinism) and seeded generators, restored when the cell ends."""
    return torch_scope(threads=cfg.train.threads, deterministic=cfg.train.deterministic, seed=cfg.seed)


def build_method(cfg: RunConfig, splits: DatasetSplits) -> Method:
    """The method at its initialisation for ``cfg.seed``; the global generator is left as it was."""
    channels, size = splits.pretrain.channels, splits.pretrain.image_size
    with seeded(cfg.seed):
        backbone = build_backbone(cfg.backbone, channels)
        second = cfg.method.second_backbone(cfg.backbone)  # built after the first: its own initial weights
        extra = {} if second is None else {"backbone_b": build_backbone(second, channels)}
        cls = method_class(cfg.method.name)
        return cls(backbone, cfg.method, num_classes=splits.train.num_classes, image_shape=(channels, size, size), **extra)


def autocast(cfg: RunConfig, device: torch.device):
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train(cfg: RunConfig, run_dir: Path, *, splits: DatasetSplits | None = None, console: Console | None = None,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Pre-train ``cfg.method`` and return the trained method with its per-epoch history.

    With ``cfg.epochs`` 0 it returns the method at its initialisation for the seed: no optimizer is built and no
    step taken, and the model file is written all the same. Resumes from ``run_dir/checkpoint.pt`` when present.
    Raises DivergedError on a non-finite loss (the last good checkpoint is kept) and Preempted after writing a
    checkpoint on SIGTERM.
    ``on_epoch`` receives each epoch's history record once its checkpoint is written (trackers log it,
    a search pruner may raise from it).

    Inside a process group (bench.train.distributed) every rank calls this: each trains on its contiguous
    share of every global batch with its own view generator, gradients are averaged over the ranks, the
    stop decisions (non-finite loss, SIGTERM) are agreed, and only rank 0 writes files and calls ``on_epoch``.
    Torch's global settings are the cell's (:func:`cell_scope`) while it trains and restored afterwards.
    """
    with cell_scope(cfg):
        return _train(cfg, run_dir, splits=splits, console=console, on_epoch=on_epoch)


def _train(cfg: RunConfig, run_dir: Path, *, splits: DatasetSplits | None, console: Console | None,
           on_epoch: Callable[[EpochRecord], None] | None) -> TrainResult:
    splits = splits or load_dataset(cfg.dataset)
    device = pick_device(cfg.train.device)
    if cfg.epochs == 0:  # the method at its initialisation for the seed: no optimizer, no step, no checkpoint
        method = build_method(cfg, splits).to(device)
        _save_model(method, cfg, [], run_dir)
        return TrainResult(method, splits, device)
    loop = setup(cfg, run_dir, splits, device)
    start_epoch, start_batch, gen_state = resume(loop)
    progress = progress_bar(console, cfg.train.progress)
    loop.method.train()
    with progress, SigtermFlag() as sigterm, stage("train"):
        done = start_epoch * loop.steps_per_epoch + start_batch
        task = progress.add_task(f"{cfg.method.name}", total=loop.total_steps, completed=done, info="")
        for epoch in range(start_epoch, cfg.epochs):
            record, generator = run_epoch(loop, epoch, start_batch, gen_state, sigterm, lambda step, info: progress.update(
                task, completed=step + 1, info=f"epoch {epoch + 1}/{cfg.epochs} {info}"))
            start_batch, gen_state = 0, None
            last = epoch + 1 == cfg.epochs
            stop = any_rank(sigterm.raised, device)
            if last or stop or (cfg.train.checkpoint_every and (epoch + 1) % cfg.train.checkpoint_every == 0):
                save(loop, epoch + 1, 0, generator)
            if stop and not last:
                raise Preempted(f"SIGTERM at the end of epoch {epoch + 1}; checkpoint written to {run_dir}")
            if on_epoch is not None:
                on_epoch(record)
    return finish(loop)


@dataclass
class Loop:
    """What one run's training loop holds: the method on its device, its optimizer and view maker, the pre-training
    split on the device, the step counts, the result it fills, and the cell's cost clock (None outside a cell)."""

    cfg: RunConfig
    run_dir: Path
    splits: DatasetSplits
    device: torch.device
    method: Method
    optimizer: torch.optim.Optimizer
    maker: ViewMaker
    pretrain: Split
    steps_per_epoch: int
    result: TrainResult
    clock: StageClock | None
    world: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs


def setup(cfg: RunConfig, run_dir: Path, splits: DatasetSplits, device: torch.device) -> Loop:
    """The method built for the seed (SyncBN across ranks, channels-last, compiled as asked), ``method.prepare`` run
    on the pre-training split, the optimizer with its parameter groups, and the view maker of ``cfg.augment``."""
    world = world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} does not split evenly over the {world} processes of the cell "
                          f"(launcher.gpus_per_cell); use a multiple of {world}")
    method = build_method(cfg, splits)
    if world > 1 and cfg.train.sync_bn:
        method = convert_sync_batch_norm(method)
    method = method.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        method.backbone.compile()
    pretrain = splits.pretrain.to(device) if hasattr(splits.pretrain, "to") else splits.pretrain
    steps_per_epoch = len(pretrain) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(pretrain)} pre-training images; lower batch_size")
    method.prepare(pretrain, cfg.train.cache_dir)
    optimizer = build_optimizer(method, cfg.optimizer, cfg.batch_size)
    maker = ViewMaker(build_recipe(cfg.augment), pretrain.mean, pretrain.std, pretrain.image_size, clean=method.needs_clean_view)
    return Loop(cfg, run_dir, splits, device, method, optimizer, maker, pretrain, steps_per_epoch,
                TrainResult(method, splits, device), active_clock(), world)


def resume(loop: Loop) -> tuple[int, int, torch.Tensor | None]:
    """Restore the run's checkpoint, if any, into ``loop``: (epoch, batch) to start from and, mid-epoch, this rank's
    view-generator state; (0, 0, None) for a fresh run."""
    cfg, run_dir = loop.cfg, loop.run_dir
    ckpt = restore_state(run_dir, loop.method, loop.optimizer,
                         same=lambda ckpt: config_id(resolve_run_config(ckpt["config"])) == config_id(cfg),
                         mismatch=f"{run_dir} holds a checkpoint of a different config; choose another run directory "
                                  "or pass --fresh to start over")
    if ckpt is None:
        return 0, 0, None
    start_epoch, start_batch, gen_state = ckpt["epoch"], ckpt["batch"], None
    loop.result.resumed_from = start_epoch + start_batch / loop.steps_per_epoch
    if start_batch > 0:  # mid-epoch: continue that epoch's stream on every rank
        states = [ckpt["generator"], *ckpt.get("peer_generators", [])]
        if len(states) != loop.world:
            raise ConfigError(f"{run_dir} holds a mid-epoch checkpoint of {len(states)} process(es); resume it with "
                              f"launcher.gpus_per_cell={len(states)}")
        gen_state = states[rank()]
    loop.result.history = [EpochRecord.from_dict(record) for record in ckpt["history"]]
    loop.result.seconds = ckpt["seconds"]
    if loop.clock is not None and ckpt.get("cost"):
        loop.clock.resume(ckpt["cost"])  # the earlier attempts' stage seconds (bench.core.cost)
    return start_epoch, start_batch, gen_state


def save(loop: Loop, epoch: int, batch: int, generator: torch.Generator) -> None:
    """The checkpoint at (``epoch``, ``batch``): weights, optimizer, generators of every rank, history, cost (rank 0)."""
    gathered = gather_with_grad(generator.get_state().to(loop.device)[None]).cpu()  # every rank's view stream
    states = [state.clone() for state in gathered]  # own storage: set_state crashes on a view with an offset
    if not is_main():
        return
    save_state(loop.run_dir, loop.method, loop.optimizer, position={"epoch": epoch, "batch": batch},
               seconds=loop.result.seconds, history=[record.as_dict() for record in loop.result.history],
               identity={"config": loop.cfg.model_dump(mode="json")}, generator=states[0], peer_generators=states[1:],
               cost=loop.clock.snapshot() if loop.clock is not None else None)


def run_epoch(loop: Loop, epoch: int, start_batch: int, gen_state: torch.Tensor | None, sigterm: SigtermFlag,
              show: Callable[[int, str], None]) -> tuple[EpochRecord, torch.Generator]:
    """Train one epoch from ``start_batch``; its history record (appended to the result) and its view generator.

    Losses and logs are summed on the device and read at the log interval only, where non-finite losses raise
    DivergedError and ``show(step, info)`` reports progress; SIGTERM mid-epoch saves and raises Preempted."""
    cfg, device, world = loop.cfg, loop.device, loop.world
    generator = torch.Generator(device=device).manual_seed((cfg.seed * 7919 + epoch) * world + rank())
    if gen_state is not None:
        generator.set_state(gen_state)
    order = epoch_permutation(len(loop.pretrain), cfg.seed, epoch)
    if world > 1:
        order = rank_share(order, cfg.batch_size)
    sums = _Sums.zeros(device)
    t0, seen = time.perf_counter(), 0
    batches = iter_batches(loop.pretrain, cfg.batch_size // world, device, order=order, drop_last=True, start=start_batch,
                           workers=cfg.train.workers, views=loop.maker.plan(cfg.seed, epoch))
    for b, (images, labels, index) in enumerate(batches, start=start_batch):
        step = epoch * loop.steps_per_epoch + b
        sums.add(train_step(loop, loop.maker(images, labels, index, generator), step), step)
        seen += labels.shape[0] * world
        check = (b + 1) % cfg.train.log_every == 0 or b + 1 == loop.steps_per_epoch
        if check:
            sums.first_bad = all_reduce(sums.first_bad, "max")
            _check_finite(sums.first_bad, loop)
            show(step, f"loss {sums.last_loss.item():.4f}")
        stop = (check or world == 1) and any_rank(sigterm.raised, device)  # ranks agree at the checks only
        if stop and b + 1 < loop.steps_per_epoch:
            loop.result.seconds += time.perf_counter() - t0
            save(loop, epoch, b + 1, generator)
            raise Preempted(f"SIGTERM at epoch {epoch + 1} step {step + 1}; checkpoint written to {loop.run_dir}")
    _check_finite(sums.first_bad, loop)
    elapsed = time.perf_counter() - t0
    loop.result.seconds += elapsed
    means = sums.means(loop.steps_per_epoch - start_batch)
    monitor = None
    if is_main() and cfg.train.knn_every and (epoch + 1) % cfg.train.knn_every == 0:
        monitor = online_knn(loop.method, loop.splits, device, cfg)
        loop.method.train()
    loss = means.pop("loss")
    record = EpochRecord(epoch=epoch + 1, loss=loss, lr=loop.optimizer.param_groups[0]["lr"], images_per_s=seen / elapsed,
                         logs=means, monitor=monitor)
    loop.result.history.append(record)
    return record, generator


def train_step(loop: Loop, views: Views, step: int) -> StepOutput:
    """One optimisation step on ``views``: schedule, forward (autocast), the shared ``optimisation_step`` (backward,
    gradient averaging across ranks, clipping, optimizer step) and the method's per-step update. Its outputs stay on
    the device."""
    cfg, method = loop.cfg, loop.method
    schedule_groups(loop.optimizer, cfg.optimizer, cfg.schedule, step, loop.total_steps, loop.steps_per_epoch)
    if loop.device.type == "cuda" and cfg.train.channels_last:
        views.crops = [v.contiguous(memory_format=torch.channels_last) for v in views.crops]
    with autocast(cfg, loop.device):
        out = method(views, step, loop.total_steps)
    optimisation_step(out.loss, loop.optimizer, method.parameters(), clip=cfg.train.grad_clip,
                      clip_mode=cfg.train.grad_clip_mode, world=loop.world)
    method.on_step_end(out, step, loop.total_steps)
    return out


@dataclass
class _Sums:
    """An epoch's running sums on the device: the loss, each logged output, and the first step with a non-finite
    loss (-1: none); nothing is read on the host until the log interval."""

    loss: torch.Tensor
    first_bad: torch.Tensor
    last_loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def zeros(cls, device: torch.device) -> _Sums:
        return cls(torch.zeros((), device=device), torch.full((), -1, dtype=torch.long, device=device),
                   torch.zeros((), device=device))

    def add(self, out: StepOutput, step: int) -> None:
        loss = out.loss.detach().float()
        self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), step, self.first_bad)
        self.loss += loss
        self.last_loss = loss
        for k, v in out.logs.items():
            self.logs[k] = self.logs.get(k, 0) + v.detach().float()

    def means(self, n_batches: int) -> dict[str, float]:
        """The epoch's mean loss and logs over its ``n_batches``, averaged over the ranks (read on the host once)."""
        sums = {"loss": all_reduce(self.loss, "mean"), **{k: all_reduce(v, "mean") for k, v in self.logs.items()}}
        return {k: float(v) / n_batches for k, v in sums.items()}


def finish(loop: Loop) -> TrainResult:
    """Write the model file; hand back (after SyncBN) a method with plain batch norm and the trained state."""
    _save_model(loop.method, loop.cfg, loop.result.history, loop.run_dir)
    if loop.world > 1 and loop.cfg.train.sync_bn:  # rank 0 evaluates alone
        loop.result.method = build_method(loop.cfg, loop.splits).to(loop.device)
        loop.result.method.load_state_dict(loop.method.state_dict())
    return loop.result


def _save_model(method: Method, cfg: RunConfig, history: list[EpochRecord], run_dir: Path) -> None:
    """The cell's model file (``MODEL``): the method's and the backbone's state, the config and the history (rank 0)."""
    if is_main():
        atomic_save({"model": method.state_dict(), "backbone": method.backbone.state_dict(),
                     "config": cfg.model_dump(mode="json"), "history": [record.as_dict() for record in history]},
                    run_dir / MODEL)


def _check_finite(first_bad: torch.Tensor, loop: Loop) -> None:
    bad = int(first_bad)
    if bad >= 0:
        raise DivergedError(epoch=bad // loop.steps_per_epoch + 1, step=bad + 1, hint=loop.method.divergence_hint)


def monitor_bank(train: Split, size: int) -> Split:
    """The online kNN's bank: ``train``, or a fixed class-balanced subset (seed 0) of about ``size`` of its samples."""
    if len(train) <= size:
        return train
    return train.subset(class_balanced_subset(train.labels, size / len(train), seed=0))


@timed("monitor", carve=True)
def online_knn(method: Method, splits: DatasetSplits, device: torch.device, cfg: RunConfig) -> Monitor:
    """The epoch's monitor: 20-NN top-1 of the current backbone on the validation split (never the
    test split), the bank a fixed class-balanced subset (seed 0) of about ``train.knn_bank`` training samples, and the
    RankMe of the validation features (no labels read)."""
    train_f, train_y = extract_features(method.backbone, monitor_bank(splits.train.labeled(), cfg.train.knn_bank), device)
    val_f, val_y = extract_features(method.backbone, splits.val.labeled(), device)
    acc = knn_eval(train_f, train_y, val_f, val_y, splits.train.num_classes, ks=(20,), temperature=cfg.eval.knn_temperature)
    return Monitor(knn20_top1=acc["knn20.top1"], rankme=effective_rank(val_f))

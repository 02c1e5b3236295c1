"""SIGTERM during detection fine-tuning, honoured within seconds even inside an iteration that takes minutes.

A detection iteration at the COCO protocol's sizes takes minutes on a CPU, so checking a flag between
iterations (bench.core.signals.SigtermFlag) is not enough. Inside ``abortable()`` the handler raises Preempted
at once instead: Python runs a signal handler between two bytecodes of the main thread, that is between two
torch operations of a forward pass, and ``watch_backward`` registers a no-op gradient hook on every trained
parameter so that a backward pass, which runs in C++, returns to Python once per parameter. Outside the
regions (optimizer step, checkpoint writing) SIGTERM only sets the flag, so a checkpoint is never half-updated;
a dropped region puts the model's buffers back (a training forward pass updates BatchNorm's statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from bench.core.signals import Preempted, SigtermFlag


def _no_op(grad: torch.Tensor) -> None:
    return None


class SigtermStop(SigtermFlag):
    """SigtermFlag that raises Preempted at once while an ``abortable()`` region runs (main thread only)."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def _handle(self, signum, frame) -> None:
        super()._handle(signum, frame)
        if self._depth:
            raise Preempted("SIGTERM")

    @contextlib.contextmanager
    def abortable(self, model: nn.Module | None = None) -> Iterator[Callable[[], None]]:
        """A region whose work SIGTERM may drop: Preempted at entry when SIGTERM came already, or the moment it comes.

        ``model``'s buffers (BatchNorm's running statistics, which a training forward pass updates) are put back as
        they were at entry when the region is dropped, so the checkpoint written next is the state before it. It
        yields a function that ends the region early (detectron2's training step ends it after backward, before
        the optimizer step that runs inside the same call).
        """
        if self.raised:
            raise Preempted("SIGTERM")
        buffers = [] if model is None else [(b, b.detach().clone()) for b in model.buffers()]
        open_ = True

        def end() -> None:
            nonlocal open_
            if open_:
                open_ = False
                self._depth -= 1

        self._depth += 1
        try:
            yield end
        except Preempted:
            end()
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            raise
        finally:
            end()

    @staticmethod
    def watch_backward(model: nn.Module) -> list[RemovableHandle]:
        """Gradient hooks that let the handler run during ``backward()`` (one per trained parameter)."""
        return [p.register_hook(_no_op) for p in model.parameters() if p.requires_grad]

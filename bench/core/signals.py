"""SIGTERM as a flag a training loop checks, and the exception a run raises once it has saved and stops."""

from __future__ import annotations

import signal
import threading


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint of the current step was written and the run can resume."""


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after every step (main thread only)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

"""Errors a user can cause: each carries one message that names the cause and the fix.

The CLI prints the message (no traceback) and exits with code 2.
"""


class UserError(Exception):
    """A mistake in the user's input (config, data, command line), not a bug in ssl-bench."""

    exit_code = 2


class DataError(UserError):
    """A dataset root is missing, incomplete or malformed."""


class ConfigError(UserError):
    """A run config or suite is invalid; the message names the key path."""


class Diverged(Exception):
    """A training loss became NaN or infinite: the message says where, ``fix`` what to change (failure ``diverged``)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


class DivergedError(Diverged):
    """Pre-training produced a non-finite loss."""

    def __init__(self, epoch: int, step: int, hint: str = ""):
        fix = "lower optimizer.lr or set train.grad_clip" + (f"; {hint}" if hint else "")
        super().__init__(f"diverged at epoch {epoch} step {step}", fix)
        self.epoch = epoch
        self.step = step


class DetectionDiverged(Diverged):
    """Detection fine-tuning produced a non-finite loss."""

    def __init__(self, iteration: int, loss: float | str, fix: str):
        super().__init__(f"detection fine-tuning diverged at iteration {iteration} (loss {loss})", fix)
        self.iteration = iteration

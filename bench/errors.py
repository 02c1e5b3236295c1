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


class DivergedError(Exception):
    """Training produced a non-finite loss; the message says where."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"diverged at epoch {epoch} step {step}")
        self.epoch = epoch
        self.step = step

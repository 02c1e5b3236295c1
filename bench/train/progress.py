"""The progress bar of a training loop (the engine's epochs, the detection loop's iterations)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.core.collectives import is_main


def progress_bar(console: Console | None, show: bool) -> Progress:
    """A rich bar of one task (its description, bar, done/total, its ``info`` field, elapsed and remaining time) on
    ``console`` (None: stderr), drawn only when ``show``, the console is a terminal and this process is rank 0."""
    console = console or Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not (show and console.is_terminal and is_main()), transient=False)

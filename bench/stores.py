"""The file behind an SQLite URL (Optuna's queue, MLflow's store): the one place that parses it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote


def sqlite_file(url: str) -> Path | None:
    """``sqlite:///results/optuna.db?timeout=5`` -> ``results/optuna.db``; None for a URL of another database."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(unquote(url.removeprefix("sqlite:///").split("?")[0]))

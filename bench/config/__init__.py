"""Typed configuration: one resolved run (``RunConfig``) and ``--set`` overrides."""

from bench.config.run import RunConfig, resolve_run_config
from bench.config.overrides import apply_overrides

__all__ = ["RunConfig", "resolve_run_config", "apply_overrides"]

"""Method registry: name -> Method subclass. Each method file registers itself on import."""

from __future__ import annotations

from bench.errors import ConfigError
from bench.methods.base import Method, MethodParams

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    _import_methods()
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def all_methods() -> dict[str, type[Method]]:
    """Every registered method that learns; the baselines (``Method.baseline``) are ``baseline_methods()``."""
    _import_methods()
    return {name: cls for name, cls in METHODS.items() if not cls.baseline}


def baseline_methods() -> dict[str, type[Method]]:
    """The registered baselines: reference rows that learn nothing (``random_init``, ``raw_pixels``)."""
    _import_methods()
    return {name: cls for name, cls in METHODS.items() if cls.baseline}


def _import_methods() -> None:
    from bench.methods import (  # noqa: F401
        barlow_twins, baselines, byol, corinfomax, dino, mae, mocov2, mocov3, mveb, mvmr, sidae, simclr, simsiam, supervised, swav,
        vicreg, wmse,
    )


__all__ = ["Method", "MethodParams", "METHODS", "register_method", "method_class", "all_methods", "baseline_methods"]

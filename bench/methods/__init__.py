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
    _import_methods()
    return dict(METHODS)


def _import_methods() -> None:
    from bench.methods import (  # noqa: F401
        barlow_twins, byol, corinfomax, dino, mae, mocov2, mocov3, mveb, mvmr, sidae, simclr, simsiam, supervised, swav, vicreg,
        wmse,
    )


__all__ = ["Method", "MethodParams", "METHODS", "register_method", "method_class", "all_methods"]

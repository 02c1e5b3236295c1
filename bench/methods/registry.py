"""The method registry: every method's name -> its class, in one explicit table.

A new method file adds its class to ``METHODS`` here (``tests/test_registries.py`` fails on a ``Method`` subclass
that is missing). The lookups raise a ConfigError naming the choices for an unknown name.
"""

from __future__ import annotations

from bench.errors import ConfigError
from bench.methods.barlow_twins import BarlowTwins
from bench.methods.base import Method
from bench.methods.baselines import RandomInit, RawPixels
from bench.methods.byol import BYOL
from bench.methods.corinfomax import CorInfoMax
from bench.methods.dino import DINO
from bench.methods.mae import MAE
from bench.methods.mocov2 import MoCoV2
from bench.methods.mocov3 import MoCoV3
from bench.methods.mveb import MVEB
from bench.methods.mvmr import MVMR
from bench.methods.sidae import DAE, SidAE
from bench.methods.simclr import SimCLR
from bench.methods.simsiam import SimSiam
from bench.methods.supervised import Supervised
from bench.methods.swav import SwAV
from bench.methods.vicreg import VICReg
from bench.methods.wmse import WMSE

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    BarlowTwins, RandomInit, RawPixels, BYOL, CorInfoMax, DINO, MAE, MoCoV2, MoCoV3, MVEB, MVMR, SidAE, DAE, SimCLR, SimSiam,
    Supervised, SwAV, VICReg, WMSE,
)}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def all_methods() -> dict[str, type[Method]]:
    """Every method that learns; the baselines (``Method.baseline``) are ``baseline_methods()``."""
    return {name: cls for name, cls in METHODS.items() if not cls.baseline}


def baseline_methods() -> dict[str, type[Method]]:
    """The baselines: reference rows that learn nothing (``random_init``, ``raw_pixels``)."""
    return {name: cls for name, cls in METHODS.items() if cls.baseline}

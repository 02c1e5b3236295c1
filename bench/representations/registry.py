"""The representation registry: every deterministic representation's name -> its params type and function.

A new representation adds its ``Representation`` here and its name to MV-MR's ``RepName`` (``tests/test_registries.py``
fails on a ``RepParams`` type of this room without an entry, and on a ``RepName`` out of step with the table).
"""

from __future__ import annotations

from bench.representations.features import (
    HogParams,
    LbpParams,
    LsdParams,
    RawParams,
    Representation,
    ScatteringParams,
    hog,
    lbp,
    lsd,
    raw,
    scattering,
)
from bench.representations.teacher import TeacherParams, teacher

REPRESENTATIONS: dict[str, Representation] = {rep.name: rep for rep in (
    Representation("raw", RawParams, raw),
    Representation("scattering", ScatteringParams, scattering),
    Representation("hog", HogParams, hog),
    Representation("lbp", LbpParams, lbp),
    Representation("lsd", LsdParams, lsd),
    Representation("teacher", TeacherParams, teacher),
)}

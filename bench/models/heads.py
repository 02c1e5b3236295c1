"""MLP heads (projectors, predictors) built from a spec string such as ``"2048-2048-128"``.

Each number is the output width of one Linear layer. Hidden layers are Linear -> [BN] -> ReLU;
the last layer is Linear -> [BN] (no activation). Papers differ in where BN goes, so both the
hidden and the last BN are switches; a Linear followed by BN carries no bias (BN has its own).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator
from torch import nn

from bench.errors import ConfigError


def _widths(spec: str) -> list[int]:
    """The widths of ``spec``; ValueError naming the fix when it is no head spec."""
    if spec.strip() == "":
        return []
    parts = spec.split("-")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError("not a head spec; write positive widths joined by '-', e.g. 2048-2048 (or '' for no head)")
    return [int(part) for part in parts]


def _valid_spec(spec: str) -> str:
    _widths(spec)
    return spec


#: a head spec in a config: refused at validation unless ``parse_spec`` reads it
HeadSpec = Annotated[str, AfterValidator(_valid_spec)]


def parse_spec(spec: str) -> list[int]:
    """``"2048-2048-128"`` -> ``[2048, 2048, 128]``; the empty string means no head."""
    try:
        return _widths(spec)
    except ValueError as err:
        raise ConfigError(f"head spec '{spec}': {err}") from None


def mlp(
    in_dim: int,
    spec: str,
    *,
    hidden_bn: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    last_bias: bool = True,
) -> nn.Module:
    """Build the MLP; an empty spec returns ``nn.Identity`` (the loss then sees the backbone output)."""
    dims = parse_spec(spec)
    layers: list[nn.Module] = []
    for i, out_dim in enumerate(dims):
        last = i == len(dims) - 1
        bn = last_bn if last else hidden_bn
        layers.append(nn.Linear(in_dim, out_dim, bias=(not bn) and (last_bias or not last)))
        if bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine if last else True))
        if not last:
            layers.append(nn.ReLU(inplace=True))
        in_dim = out_dim
    return nn.Sequential(*layers) if layers else nn.Identity()


def out_dim(in_dim: int, spec: str) -> int:
    dims = parse_spec(spec)
    return dims[-1] if dims else in_dim

"""MLP heads (projectors, predictors) built from a spec string such as ``"2048-2048-128"``.

Each number is the output width of one Linear layer. Hidden layers are Linear -> [BN] -> ReLU;
the last layer is Linear -> [BN] (no activation). Papers differ in where BN goes, so both the
hidden and the last BN are switches; a Linear followed by BN carries no bias (BN has its own).
"""

from __future__ import annotations

from torch import nn

from bench.errors import ConfigError


def parse_spec(spec: str) -> list[int]:
    """``"2048-2048-128"`` -> ``[2048, 2048, 128]``; the empty string means no head."""
    if spec.strip() == "":
        return []
    try:
        dims = [int(part) for part in spec.split("-")]
    except ValueError:
        raise ConfigError(f"bad head spec '{spec}': expected widths joined by '-', e.g. '2048-2048-128'") from None
    if any(d < 1 for d in dims):
        raise ConfigError(f"bad head spec '{spec}': widths must be positive")
    return dims


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

"""``--set key=value`` overrides by dotted key path, with values parsed as YAML scalars/lists."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from bench.config.yamlfile import ConfigLoader
from bench.errors import ConfigError

#: keys that may be given as a bare name and mean ``{"name": value}``
NAMED_SECTIONS = ("method", "dataset", "backbone")


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=0.1"`` -> (["optimizer", "lr"], 0.1)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(part == "" for part in key.split(".")):
        raise ConfigError(f"bad override '{text}': expected key=value with a dotted key, e.g. optimizer.lr=0.1")
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def normalize_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Expand ``method: simclr`` into ``method: {name: simclr}`` (likewise dataset, backbone)."""
    for section in NAMED_SECTIONS:
        if isinstance(data.get(section), str):
            data[section] = {"name": data[section]}
    return data


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` applied in order.

    Setting a section's name (``method=byol``) replaces that section, so hyper-parameters of the
    previous method never leak into the new one.
    """
    out = normalize_sections(copy.deepcopy(data))
    for text in assignments:
        path, value = parse_assignment(text)
        if len(path) == 1 and path[0] in NAMED_SECTIONS and isinstance(value, str):
            out[path[0]] = {"name": value}
            continue
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"bad override '{text}': '{where}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config -> ``{dotted.key: leaf}``; an empty mapping is a leaf."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat

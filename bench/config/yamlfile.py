"""YAML as configs read it: UTF-8 text, no repeated key, ``1e-3`` a number; every problem names its line.

PyYAML's safe loader keeps the last of two equal keys and reads ``1e-3`` (no dot) as text; a config that
repeats a key is a mistake, and a learning rate written ``1e-3`` is a number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError

#: YAML 1.2 floats that YAML 1.1 reads as text: an exponent without a dot or without a sign (1e-3, 1.0e5, 2E+4)
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
MERGE = "tag:yaml.org,2002:merge"


class RepeatedKey(yaml.constructor.ConstructorError):
    """A mapping gives one key twice."""


class ConfigLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping and reading ``1e-3`` as a float."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the safe loader names it below
                    continue
                if earlier is not key_node.start_mark:
                    raise RepeatedKey(None, None, f"the key {key!r} is given twice (first at line {earlier.line + 1}); "
                                      "keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


class ConfigDumper(yaml.SafeDumper):
    """The safe dumper, quoting text that ConfigLoader would read as a number (``'1e-3'``)."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
ConfigDumper.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def dump_yaml(data: Any, **options: Any) -> str:
    """``data`` as YAML that ``parse_yaml`` reads back as the same data."""
    return yaml.dump(data, Dumper=ConfigDumper, **options)


def parse_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text``; a ConfigError starting with ``source`` names the line of any problem."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        fix = "" if isinstance(err, RepeatedKey) else "; fix the syntax there"
        raise ConfigError(f"{source}: invalid YAML{where}: {err.problem}{fix}") from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        code = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(f"{source}: line {line} holds the control character U+{code:04X}, which YAML does not allow; "
                          "delete it (is this a text file?)") from None


def read_yaml(path: Path, source: str | None = None) -> Any:
    """The data of the YAML file ``path``; a ConfigError names the line that is no UTF-8 text or no valid YAML."""
    source = source or str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{source}: line {line} is not UTF-8 text (byte {raw[err.start]:#04x}); "
                          "save the file as UTF-8") from None
    return parse_yaml(text, source)

"""The base of every config model: unknown keys are errors, numbers are finite, and no lax cast hides a mistake.

Strict validation: an int field takes an int (not ``true``, ``1.5`` or ``"3"``), a bool field a bool (not ``1`` or
``"yes"``), a float field a number (an int too), a str field a str; ``.inf`` and ``.nan`` are refused everywhere.
YAML spells a path as text and a tuple as a list, so those fields carry ``FROM_YAML``, which takes that form
(the items of a tuple stay strict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Strict

#: marks a field whose YAML form is another type (a path is text, a tuple a list); see the module docstring
FROM_YAML = Strict(False)

#: a path field (written as text)
PathField = Annotated[Path, FROM_YAML]


class ConfigModel(BaseModel):
    """A config section: strict types, finite numbers, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

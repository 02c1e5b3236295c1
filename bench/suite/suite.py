"""A suite: one YAML file that expands into cells (fully resolved run configs), with its launch settings.

``load_suite`` validates a suite file completely (structure, every cell, the search space, and the ``Checks``
it is given: the preflight's models and data files) and raises one ConfigError listing every problem by its YAML
key path. ``expand_suite`` gives the cells in a fixed order:
the matrix product (zip entries are one axis each), each cell multiplied by its method's ablations, then
by the seeds, then the cells of the suite's ``baselines`` (bench/config/baselines.py). A cell's id is the hash of its
resolved config, so the same run in two suites is one cell.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from bench.config.overrides import NAMED_SECTIONS, apply_overrides, merge_sections, normalize_sections, parse_assignment
from bench.config.run import RunConfig, config_id, format_validation_error, resolve_run_config
from bench.eval.config import EvalConfig
from bench.config.baselines import baseline_cells
from bench.suite.cells import DOTTED_KEY, Cell, Problems, Setting, axis_paths, axis_problems, check_unique, drop_axes, excluded, raise_if, run_key
from bench.suite.infra import LauncherConfig, StorageConfig, TrackingConfig
from bench.config.search import SearchConfig
from bench.config.yamlfile import dump_yaml, parse_yaml, read_yaml
from bench.errors import ConfigError
from bench.methods import method_class
from bench.methods.baselines import Baseline
from bench.schema import FROM_YAML, ConfigModel
from bench.transfer.stage import DetectionStage, stage_cell_id


Axis = Annotated[list[Any], Field(min_length=1)]


class SuiteEvaluations(EvalConfig):
    """A cell's evaluations, plus detection transfer, which runs as a dependent cell (bench/transfer/stage.py)."""

    detection: DetectionStage | None = Field(None, description="detection transfer of every pre-training cell")


class Suite(ConfigModel):
    """One benchmark suite as written in its YAML file (after ``--set`` overrides)."""

    name: str = Field(description="names the Optuna study and the MLflow experiment; letters, digits, '_', '.', '-'")
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict, description="a partial run config, the base of every cell")
    matrix: dict[str, Axis] = Field(default_factory=dict, description="dotted run-config key -> values; the cartesian product")
    ablations: dict[str, Axis] = Field(default_factory=dict, description="'<method>.<key>' -> values, multiplying that method's cells")
    zip: list[Annotated[dict[str, Axis], Field(min_length=1)]] = Field(
        default_factory=list, description="axes that vary together (equal lengths); each entry is one axis of the product")
    exclude: list[Annotated[dict[str, Any], Field(min_length=1)]] = Field(
        default_factory=list, description="drop every cell whose axis values match all keys of a rule")
    seeds: Annotated[list[int], Field(min_length=1)] | None = Field(
        None, description="each cell once per seed (null: once, with defaults.seed, which is 0 unless set)")
    evaluations: SuiteEvaluations | None = Field(
        None, description="evaluations of every cell, merged over defaults.eval; detection adds a dependent cell per cell")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    search: SearchConfig | None = Field(None, description="hyper-parameter search instead of a fixed set of cells")
    baselines: list[Annotated[Baseline, FROM_YAML]] = Field(
        default_factory=list, description="reference rows that learn nothing, each a cell per dataset, backbone and "
        f"evaluations of the suite's cells (random_init: per seed): {', '.join(Baseline)}")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use only letters, digits, '_', '.' and '-' (the name becomes a study and an experiment name)")
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines_of_fixed_cells(cls, v: list[Baseline], info: ValidationInfo) -> list[Baseline]:
        if len(set(v)) != len(v):
            raise ValueError(f"{[b.value for b in v]} lists a baseline twice")
        if v and info.data.get("search") is not None:
            raise ValueError("a search suite has no fixed cells to compare with; list the baselines in a suite of the "
                             "configurations the search found")
        return v

    def to_yaml(self) -> str:
        """The suite as YAML, with only the keys that were given; ``suite_from_yaml`` reads it back."""
        return dump_yaml(self.model_dump(mode="json", exclude_unset=True), sort_keys=False)


#: suite keys that shape the cells; ``--set`` cannot change them (it sets run-config keys, which replace axes)
CELL_KEYS = frozenset({"defaults", "matrix", "ablations", "zip", "exclude"})
#: suite keys that ``--set`` changes directly; any other ``--set`` key is a run-config key
SUITE_KEYS = frozenset(Suite.model_fields) - CELL_KEYS


@dataclass(frozen=True)
class Checks:
    """Checks of a suite beyond its schema, which need the implementation rooms (bench/orchestrate/preflight.py
    supplies them: it builds the models and looks for the data files). Each returns problem lines, each led by
    the key path it is about; the suite rewrites a cell's run-config key path to the suite key that set it."""

    cell: Callable[[RunConfig], list[str]]  #: a resolved cell; lines led by run-config keys (method.projector: ...)
    detection: Callable[[DetectionStage], list[str]]  #: the detection stage; lines led by its keys (coco.root: ...)


def stage_cells(suite: Suite, cells: list[Cell]) -> list[Cell]:
    """The dependent detection cells of a suite with ``evaluations.detection`` (none otherwise), baselines' none."""
    stage = suite.evaluations.detection if suite.evaluations else None
    if stage is None:
        return []
    return [Cell(stage_cell_id(c.id, stage), c.config, {**c.axes, "stage": "detection"}, depends_on=c.id) for c in cells
            if not method_class(c.config.method.name).baseline]


def load_suite(path: Path, sets: Sequence[str] = (), checks: Checks | None = None) -> Suite:
    """Read, override (``--set key=value``) and fully validate a suite file, including every cell (and ``checks``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found; give the path of a suite YAML file, e.g. suites/quickstart.yaml")
    return _validated(read_yaml(path), sets, str(path), checks)


def suite_from_yaml(text: str, sets: Sequence[str] = (), *, source: str = "suite", checks: Checks | None = None) -> Suite:
    """Like ``load_suite`` for YAML text; ``source`` starts each error message."""
    return _validated(parse_yaml(text, source), sets, source, checks)


def _validated(data: Any, sets: Sequence[str], source: str, checks: Checks | None) -> Suite:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{source}: expected a mapping of suite keys (name, defaults, matrix, ...) at the top level, got {got}")
    try:
        suite = _parse(data)
        if sets:
            suite = _parse(_apply_sets(suite, sets))
        cells = _expand(suite, checks)
        if suite.search is not None:
            _check_search(suite.search, cells, checks)
    except Problems as err:
        raise _invalid(source, err.lines) from None
    return suite


def expand_suite(suite: Suite) -> list[Cell]:
    """Every cell of the suite: matrix (and zip) order, then ablations, then seeds; excluded cells left out."""
    try:
        return _expand(suite)
    except Problems as err:
        raise _invalid(f"suite {suite.name}", err.lines) from None


def search_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base cell's config with each sampled value set by its ``search.space`` key, resolved."""
    settings = [Setting(f"search.space.{key}", key, run_key(key), value) for key, value in params.items()]
    return resolve_run_config(_apply(base.model_dump(mode="json"), settings))


def _invalid(source: str, lines: list[str]) -> ConfigError:
    return ConfigError(f"{source}: invalid suite ({len(lines)} problem{'s' * (len(lines) > 1)}):\n  " + "\n  ".join(lines))


def _parse(data: dict[str, Any]) -> Suite:
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        raise Problems(_lines(format_validation_error(err))) from None


def _lines(message: str) -> list[str]:
    """The problem lines of a run-config error: those under 'invalid config:', else the message itself."""
    lines = message.splitlines()
    return [line.strip() for line in lines[1:]] if lines[0] == "invalid config:" else [message]




def _apply_sets(suite: Suite, sets: Sequence[str]) -> dict[str, Any]:
    """The suite's data with each ``--set`` applied: a suite key directly, a run-config key to the defaults.

    A run-config key also removes the axes that it fixes (the matrix, zip and ablation axes at or under
    it, and the exclude rules naming them), so ``--set epochs=1`` makes every cell one epoch long.
    """
    data = suite.model_dump(mode="json", exclude_unset=True)
    problems = []
    for text in sets:
        try:
            path, value = parse_assignment(text)
            if path[0] in CELL_KEYS:
                raise ConfigError(f"{path[0]} cannot be set from the command line; set a run-config key (e.g. "
                                  "batch_size=64, which replaces its axis) or edit the suite file")
            if path[0] in SUITE_KEYS:
                data = apply_overrides(data, [text])
                continue
            key = run_key(".".join(path))
            data["defaults"] = apply_overrides(data.get("defaults", {}), [f"{key}={text.partition('=')[2]}"])
            drop_axes(data, key, value)
        except ConfigError as err:
            problems.append(f"--set {text}: {err}")
    raise_if(problems)
    return data


def _defaults(suite: Suite) -> dict[str, Any]:
    """The suite's defaults with its evaluations merged over ``defaults.eval``."""
    defaults = normalize_sections(copy.deepcopy(suite.defaults))
    evaluations = suite.evaluations.model_dump(mode="json", exclude_unset=True, exclude={"detection"}) if suite.evaluations else {}
    if isinstance(defaults.get("eval", {}), dict):
        defaults["eval"] = merge_sections(defaults.get("eval", {}), evaluations)
    return defaults


def _axis(path: str, key: str, run_key: str, values: list[Any]) -> list[list[Setting]]:
    """An axis of one key: one row (a list of settings) per value."""
    return [[Setting(path, key, run_key, value)] for value in values]


def _base_axes(suite: Suite) -> list[list[list[Setting]]]:
    """The axes of the product: each matrix key, and each zip entry (its rows set several keys at once)."""
    axes = [_axis(f"matrix.{key}", key, run_key(key), values) for key, values in suite.matrix.items()]
    for i, entry in enumerate(suite.zip):
        axes.append([[Setting(f"zip.{i}.{key}", key, run_key(key), value) for key, value in zip(entry, row, strict=True)]
                     for row in zip(*entry.values(), strict=True)])
    return axes


def _method_axes(suite: Suite, method: str) -> list[list[list[Setting]]]:
    """The ablation axes of ``method``, then the seeds."""
    axes = [_axis(f"ablations.{key}", key, run_key(key.partition(".")[2]), values)
            for key, values in suite.ablations.items() if key.partition(".")[0] == method]
    return axes + [_axis("seeds", "seed", "seed", suite.seeds) if suite.seeds else [[]]]


def _expand(suite: Suite, checks: Checks | None = None) -> list[Cell]:
    raise_if(axis_problems(suite))
    defaults = _defaults(suite)
    problems: list[str] = []
    bases = []
    for row in itertools.product(*_base_axes(suite)):
        settings = [s for part in row for s in part]
        base_problems: list[str] = []
        config = _resolve(defaults, settings, base_problems)
        method = config.method.name if config is not None else _named_method(defaults, settings)
        if config is None and not any(key.partition(".")[0] == method for key in suite.ablations):
            problems += base_problems
        elif method is not None:  # an invalid base that its method's ablations may make valid: its cells tell
            bases.append((settings, method))
    raise_if(problems)
    methods = sorted({method for _, method in bases})
    raise_if([f"ablations.{key}: applies to no method of the suite (its methods: {', '.join(methods)}); "
               "add the method to the matrix or drop the ablation"
               for key in suite.ablations if key.partition(".")[0] not in methods])
    cells, made_by = [], {}
    for base, method in bases:
        for row in itertools.product(*_method_axes(suite, method)):
            settings = base + [s for part in row for s in part]
            config = _resolve(defaults, settings, problems)
            if config is not None:
                axes = {s.key: s.value for s in settings}
                axes.setdefault("seed", config.seed)
                cells.append(Cell(config_id(config), config, axes))
                made_by[cells[-1].id] = settings
    raise_if(problems)
    cells = excluded(suite.exclude, cells)
    check_unique(cells, axis_paths(suite))
    if checks is not None:
        raise_if(_checked(suite, [(cell, made_by[cell.id]) for cell in cells], checks))
    return cells + _baseline_cells(suite, cells, checks)


def _baseline_cells(suite: Suite, cells: list[Cell], checks: Checks | None) -> list[Cell]:
    """The cells of the suite's ``baselines`` that are no cell of it already; what ``checks`` find in them."""
    ids = {cell.id for cell in cells}
    made = [Cell(config_id(config), config, axes) for config, axes in baseline_cells([(c.config, c.axes) for c in cells], suite.baselines)]
    made = [cell for cell in made if cell.id not in ids]
    if checks is not None:
        raise_if([f"baselines: {line}" for cell in made for line in checks.cell(cell.config)])
    return made


def _checked(suite: Suite, cells: list[tuple[Cell, list[Setting]]], checks: Checks) -> list[str]:
    """What ``checks`` find in the cells (each made by its settings) and in the detection stage, by suite key path."""
    evaluated = suite.evaluations.model_fields_set if suite.evaluations else set()
    lines = [_attribute(line, settings, evaluated) for cell, settings in cells for line in checks.cell(cell.config)]
    stage = suite.evaluations.detection if suite.evaluations else None
    if stage is not None:
        lines += [f"evaluations.detection.{line}" for line in checks.detection(stage)]
    return lines


def _named_method(defaults: dict[str, Any], settings: Sequence[Setting]) -> str | None:
    """The method a base cell names, without resolving it (None when it names none)."""
    try:
        method = _apply(defaults, settings).get("method")
    except ConfigError:
        return None
    return method.get("name") if isinstance(method, dict) else None


def _apply(data: dict[str, Any], settings: Sequence[Setting]) -> dict[str, Any]:
    """``data`` with each setting applied, whole sections before the keys inside them.

    An axis that names a method, dataset or backbone keeps the other keys of that section in ``data``
    when the section there has no name or the same name (hyper-parameters never leak to another method).
    """
    for s in sorted(settings, key=lambda s: s.run_key.count(".")):
        value = s.value
        if s.run_key in NAMED_SECTIONS and isinstance(value, str):
            section = data.get(s.run_key)
            kept = section if isinstance(section, dict) and section.get("name", value) == value else {}
            value = {**kept, "name": value}
        text = dump_yaml(value, default_flow_style=True, width=math.inf).removesuffix("...\n").strip()
        try:
            data = apply_overrides(data, [f"{s.run_key}={text}"])
        except ConfigError as err:
            raise ConfigError(f"{s.run_key}: {err}") from None
    return data


def _resolve(defaults: dict[str, Any], settings: Sequence[Setting], problems: list[str]) -> RunConfig | None:
    """The resolved config of one cell, or None with its problems appended, each naming the suite key."""
    try:
        return resolve_run_config(_apply(defaults, settings))
    except ConfigError as err:
        problems += [_attribute(line, settings) for line in _lines(str(err))]
        return None


def _attribute(line: str, settings: Sequence[Setting], evaluated: Set[str] = frozenset()) -> str:
    """Rewrite a run-config problem line to start with the suite key that caused it.

    The deepest setting whose run-config key starts the line owns it. A line about a key above a setting
    (a value that the setting made a section) is that setting's, unless it is about a named section (a
    missing method); a line without a key path is the setting's whose text value it quotes (an unknown
    method or dataset name). Anything else comes from the defaults, or from ``evaluations`` for an ``eval`` key
    the suite's ``evaluations`` sets (``evaluated``).
    """
    deepest_first = sorted(settings, key=lambda s: len(s.run_key))[::-1]  # of equal keys, the later (applied last)
    for s in deepest_first:
        if re.match(re.escape(s.run_key) + r"[.:\[]", line):
            return s.path + line[len(s.run_key):]
    keyed = re.match(r"\w+[.:\[]", line) is not None
    loc = line.partition(":")[0]
    for s in deepest_first:
        above = keyed and loc not in NAMED_SECTIONS and s.run_key.startswith(loc + ".")
        if above or (not keyed and isinstance(s.value, str) and repr(s.value) in line):
            return f"{s.path}: {line}"
    section, _, rest = line.partition(".")
    if section == "eval" and re.match(r"\w*", rest)[0] in evaluated:
        return f"evaluations.{rest}"
    return f"defaults.{line}" if keyed else f"defaults: {line}"


def _check_search(search: SearchConfig, cells: list[Cell], checks: Checks | None) -> None:
    """A search suite has one base cell, a search space of valid run-config keys, and kNN for its pruner."""
    if len(cells) != 1:
        raise Problems([f"search: a search suite expands to one base cell, this one to {len(cells)}; move the axes into search.space"])
    base = cells[0].config
    data = base.model_dump(mode="json")
    problems = []
    for key, param in search.space.items():
        if not DOTTED_KEY.fullmatch(key):
            problems.append(f"search.space.{key}: not a dotted key; write names joined by dots, e.g. optimizer.lr")
            continue
        for value in param.choices or [param.low, param.high]:
            setting = Setting(f"search.space.{key}", key, run_key(key), value)
            config = _resolve(data, [setting], problems)
            if config is not None and checks is not None:
                problems += [_attribute(line, [setting]) for line in checks.cell(config)]
    if search.pruner != "none" and base.train.knn_every == 0:
        problems.append(f"search.pruner: the {search.pruner} pruner acts on the online kNN, which is off; "
                        "set defaults.train.knn_every (e.g. 1) or search.pruner: none")
    raise_if(problems)

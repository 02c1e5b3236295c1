"""A suite: one YAML file that expands into cells (fully resolved run configs), with its launch settings.

``load_suite`` validates a suite file completely (structure, every cell, the search space, and the ``Checks``
it is given: the preflight's models and data files) and raises one ConfigError listing every problem by its YAML
key path. ``expand_suite`` gives the cells in a fixed order:
the matrix product (zip entries are one axis each), each cell multiplied by its method's ablations, then
by the seeds. A cell's id is the hash of its resolved config, so the same run in two suites is one cell.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bench.config.overrides import (
    NAMED_SECTIONS,
    apply_overrides,
    normalize_sections,
    parse_assignment,
)
from bench.config.run import (
    EvalConfig,
    RunConfig,
    config_id,
    format_validation_error,
    resolve_run_config,
)
from bench.config.search import SearchConfig
from bench.config.yamlfile import dump_yaml, parse_yaml, read_yaml
from bench.errors import ConfigError
from bench.methods import method_class
from bench.schema import ConfigModel, PathField
from bench.transfer.stage import DetectionStage, stage_cell_id

#: database backends an Optuna storage URL may name
STORAGE_BACKENDS = frozenset({"sqlite", "postgresql", "mysql"})
#: URI schemes MLflow tracking accepts here (anything without a scheme is a path)
TRACKING_SCHEMES = frozenset({"file", "sqlite", "postgresql", "mysql", "http", "https", "databricks"})
#: names joined by dots, e.g. ``optimizer.lr``
DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

Axis = Annotated[list[Any], Field(min_length=1)]


class TrackingConfig(ConfigModel):
    """Where MLflow records the suite's runs."""

    mlflow_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else an SQLite file under results/")
    experiment: str | None = Field(None, description="MLflow experiment (null: the suite name)")

    @field_validator("mlflow_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):", v or "")
        if scheme and scheme[1].split("+")[0].lower() not in TRACKING_SCHEMES:
            raise ValueError(f"unsupported URI scheme '{scheme[1]}'; give a path such as results/mlruns or a URI with "
                             f"scheme {', '.join(sorted(TRACKING_SCHEMES))}")
        return v


class StorageConfig(ConfigModel):
    """The Optuna storage that is the suite's work queue, and the worker's liveness settings."""

    url: str | None = Field(None, description="SQLAlchemy URL (null: an SQLite file under results/)")
    runs_dir: PathField = Field(Path("results/cells"), description="one directory per cell: checkpoints, curves, reports")
    heartbeat_interval: int = Field(60, ge=1, description="seconds between a running cell's heartbeats")
    grace_period: int = Field(180, ge=1, description="seconds without a heartbeat after which a cell counts as dead")
    retries: int = Field(2, ge=0, description="times a dead or failed cell is queued again")

    @field_validator("url")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            backend = make_url(v).get_backend_name()
        except (ArgumentError, ValueError):
            backend = None
        if backend not in STORAGE_BACKENDS:
            raise ValueError("not a database URL of sqlite, postgresql or mysql; e.g. sqlite:///results/optuna.db "
                             "or postgresql+psycopg2://user:password@host:5432/db")
        return v

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> StorageConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period} s) must exceed heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live cells count as dead")
        return self


class SlurmConfig(ConfigModel):
    """One Slurm job array of workers (submitted with submitit)."""

    partition: str | None = Field(None, description="Slurm partition (null: the cluster's default)")
    gres: str | None = Field(None, description="generic resources per job, e.g. gpu:1")
    time_min: int = Field(240, ge=1, description="time limit of each job in minutes")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores per job")
    mem_gb: int = Field(64, ge=1, description="memory per job in GB")
    account: str | None = Field(None, description="Slurm account to charge")
    qos: str | None = Field(None, description="Slurm quality of service")
    array_parallelism: int = Field(64, ge=1, description="jobs of the array running at once")
    folder: PathField = Field(Path("results/slurm"), description="submitit's logs and pickles")


class LauncherConfig(ConfigModel):
    """How workers are started."""

    name: Literal["local", "slurm", "print"] = Field("local", description="local processes, a Slurm array, or print the command")
    workers: int | None = Field(None, ge=1, description="number of workers (null: one per gpus_per_cell visible GPUs, else one)")
    gpus_per_cell: int = Field(1, ge=1, description="processes (GPUs on CUDA) that train one cell together with "
                               "torch.distributed; batch_size stays the global batch")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="settings of the slurm launcher")


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

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use only letters, digits, '_', '.' and '-' (the name becomes a study and an experiment name)")
        return v

    def to_yaml(self) -> str:
        """The suite as YAML, with only the keys that were given; ``suite_from_yaml`` reads it back."""
        return dump_yaml(self.model_dump(mode="json", exclude_unset=True), sort_keys=False)


#: suite keys that shape the cells; ``--set`` cannot change them (it sets run-config keys, which replace axes)
CELL_KEYS = frozenset({"defaults", "matrix", "ablations", "zip", "exclude"})
#: suite keys that ``--set`` changes directly; any other ``--set`` key is a run-config key
SUITE_KEYS = frozenset(Suite.model_fields) - CELL_KEYS


@dataclass(frozen=True)
class Cell:
    """One run of a suite: its identity, resolved config, and the suite's axis values that made it.

    A detection cell (``depends_on`` set) fine-tunes a detector from the pre-training cell ``depends_on``;
    its ``config`` is that source's.
    """

    id: str
    config: RunConfig
    axes: dict[str, Any]
    depends_on: str | None = None


@dataclass(frozen=True)
class Checks:
    """Checks of a suite beyond its schema, which need the implementation rooms (bench/orchestrate/preflight.py
    supplies them: it builds the models and looks for the data files). Each returns problem lines, each led by
    the key path it is about; the suite rewrites a cell's run-config key path to the suite key that set it."""

    cell: Callable[[RunConfig], list[str]]  #: a resolved cell; lines led by run-config keys (method.projector: ...)
    detection: Callable[[DetectionStage], list[str]]  #: the detection stage; lines led by its keys (coco.root: ...)


def stage_cells(suite: Suite, cells: list[Cell]) -> list[Cell]:
    """The dependent detection cells of a suite with ``evaluations.detection`` (none otherwise)."""
    stage = suite.evaluations.detection if suite.evaluations else None
    if stage is None:
        return []
    return [Cell(stage_cell_id(c.id, stage), c.config, {**c.axes, "stage": "detection"}, depends_on=c.id) for c in cells]


class _Setting(NamedTuple):
    """One axis value of a cell: where the suite writes it, its axis key, and the run-config key it sets."""

    path: str
    key: str
    run_key: str
    value: Any


class _Problems(Exception):
    """Problems found while validating a suite, one line each, each starting with its key path."""

    def __init__(self, lines: Sequence[str]):
        super().__init__()
        self.lines = list(dict.fromkeys(lines))


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
    except _Problems as err:
        raise _invalid(source, err.lines) from None
    return suite


def expand_suite(suite: Suite) -> list[Cell]:
    """Every cell of the suite: matrix (and zip) order, then ablations, then seeds; excluded cells left out."""
    try:
        return _expand(suite)
    except _Problems as err:
        raise _invalid(f"suite {suite.name}", err.lines) from None


def search_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base cell's config with each sampled value set by its ``search.space`` key, resolved."""
    settings = [_Setting(f"search.space.{key}", key, _run_key(key), value) for key, value in params.items()]
    return resolve_run_config(_apply(base.model_dump(mode="json"), settings))


def _invalid(source: str, lines: list[str]) -> ConfigError:
    return ConfigError(f"{source}: invalid suite ({len(lines)} problem{'s' * (len(lines) > 1)}):\n  " + "\n  ".join(lines))


def _raise_if(lines: Sequence[str]) -> None:
    if lines:
        raise _Problems(lines)


def _parse(data: dict[str, Any]) -> Suite:
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        raise _Problems(_lines(format_validation_error(err))) from None


def _lines(message: str) -> list[str]:
    """The problem lines of a run-config error: those under 'invalid config:', else the message itself."""
    lines = message.splitlines()
    return [line.strip() for line in lines[1:]] if lines[0] == "invalid config:" else [message]


def _run_key(key: str) -> str:
    """The run-config key an axis key sets: a bare method hyper-parameter name ``x`` means ``method.x``."""
    return key if key.split(".")[0] in RunConfig.model_fields else f"method.{key}"


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
            key = _run_key(".".join(path))
            data["defaults"] = apply_overrides(data.get("defaults", {}), [f"{key}={text.partition('=')[2]}"])
            _drop_axes(data, key, value)
        except ConfigError as err:
            problems.append(f"--set {text}: {err}")
    _raise_if(problems)
    return data


def _drop_axes(data: dict[str, Any], key: str, value: Any) -> None:
    """Remove the axes that a run-config override of ``key`` fixes (see ``_apply_sets``)."""
    method = value if key in ("method", "method.name") and isinstance(value, str) else None

    def fixed(axis_key: str) -> bool:
        run_key = _run_key(axis_key)
        return run_key == key or run_key.startswith(key + ".")

    def fixed_ablation(ablation_key: str) -> bool:
        owner, _, param = ablation_key.partition(".")
        return fixed(param) or (method is not None and owner != method)

    zipped = [k for entry in data.get("zip", []) for k in entry]
    removed = {k for k in [*data.get("matrix", {}), *zipped] if fixed(k)}
    removed |= {k for k in data.get("ablations", {}) if fixed_ablation(k)}
    if key == "seed":
        data.pop("seeds", None)
        removed.add("seed")
    data["matrix"] = {k: v for k, v in data.get("matrix", {}).items() if k not in removed}
    data["zip"] = [kept for entry in data.get("zip", []) if (kept := {k: v for k, v in entry.items() if k not in removed})]
    data["ablations"] = {k: v for k, v in data.get("ablations", {}).items() if k not in removed}
    data["exclude"] = [rule for rule in data.get("exclude", []) if removed.isdisjoint(rule)]


def _axis_paths(suite: Suite) -> dict[str, str]:
    """Each axis key (as a cell's ``axes`` names it) -> its YAML key path."""
    paths = {key: f"matrix.{key}" for key in suite.matrix}
    paths |= {key: f"zip.{i}.{key}" for i, entry in enumerate(suite.zip) for key in entry}
    paths |= {key: f"ablations.{key}" for key in suite.ablations}
    return paths | {"seed": "seeds"}


def _axis_problems(suite: Suite) -> list[str]:
    """Problems of the axes themselves: key syntax, owners of ablations, zip shapes, repeats, exclude keys."""
    lines = []
    keys = [(f"matrix.{key}", key) for key in suite.matrix]
    for i, entry in enumerate(suite.zip):
        if len({len(values) for values in entry.values()}) > 1:
            sizes = ", ".join(f"{key}: {len(values)}" for key, values in entry.items())
            lines.append(f"zip.{i}: its axes differ in length ({sizes}); a zip entry pairs values row by row")
        for key in entry:
            keys.append((f"zip.{i}.{key}", key))
            earlier = ["matrix"] * (key in suite.matrix) + [f"zip.{j}" for j in range(i) if key in suite.zip[j]]
            if earlier:
                lines.append(f"zip.{i}.{key}: also an axis in {earlier[0]}; give each axis in one place")
        rows = list(zip(*entry.values(), strict=False))
        lines += [f"zip.{i}: the row {list(row)} appears twice; each cell must differ" for row in _repeated(rows)]
    for key in suite.ablations:
        method, _, param = key.partition(".")
        if not param:
            lines.append(f"ablations.{key}: expected <method>.<key>, e.g. vicreg.epochs or simclr.temperature")
            continue
        try:
            method_class(method)
        except ConfigError as err:
            lines.append(f"ablations.{key}: {err}")
        keys.append((f"ablations.{key}", param))
    lines += [f"{path}: not a dotted key; write names joined by dots, e.g. optimizer.lr" for path, key in keys
              if not DOTTED_KEY.fullmatch(key)]
    for path, values in [*((f"matrix.{k}", v) for k, v in suite.matrix.items()),
                         *((f"ablations.{k}", v) for k, v in suite.ablations.items()), ("seeds", suite.seeds or [])]:
        lines += [f"{path}: the value {value!r} appears twice; each cell must differ" for value in _repeated(values)]
    paths = _axis_paths(suite)
    for i, rule in enumerate(suite.exclude):
        lines += [f"exclude.{i}.{key}: not an axis of the suite (its axes: {', '.join(paths)})" for key in rule if key not in paths]
    return lines


def _repeated(values: Sequence[Any]) -> list[Any]:
    return [value for i, value in enumerate(values) if value in values[:i]]


def _defaults(suite: Suite) -> dict[str, Any]:
    """The suite's defaults with its evaluations merged over ``defaults.eval``."""
    defaults = normalize_sections(copy.deepcopy(suite.defaults))
    evaluations = suite.evaluations.model_dump(mode="json", exclude_unset=True, exclude={"detection"}) if suite.evaluations else {}
    if isinstance(defaults.get("eval", {}), dict):
        defaults["eval"] = _merged(defaults.get("eval", {}), evaluations)
    return defaults


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key, recursing into mappings on both sides."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _axis(path: str, key: str, run_key: str, values: list[Any]) -> list[list[_Setting]]:
    """An axis of one key: one row (a list of settings) per value."""
    return [[_Setting(path, key, run_key, value)] for value in values]


def _base_axes(suite: Suite) -> list[list[list[_Setting]]]:
    """The axes of the product: each matrix key, and each zip entry (its rows set several keys at once)."""
    axes = [_axis(f"matrix.{key}", key, _run_key(key), values) for key, values in suite.matrix.items()]
    for i, entry in enumerate(suite.zip):
        axes.append([[_Setting(f"zip.{i}.{key}", key, _run_key(key), value) for key, value in zip(entry, row, strict=True)]
                     for row in zip(*entry.values(), strict=True)])
    return axes


def _method_axes(suite: Suite, method: str) -> list[list[list[_Setting]]]:
    """The ablation axes of ``method``, then the seeds."""
    axes = [_axis(f"ablations.{key}", key, _run_key(key.partition(".")[2]), values)
            for key, values in suite.ablations.items() if key.partition(".")[0] == method]
    return axes + [_axis("seeds", "seed", "seed", suite.seeds) if suite.seeds else [[]]]


def _expand(suite: Suite, checks: Checks | None = None) -> list[Cell]:
    _raise_if(_axis_problems(suite))
    defaults = _defaults(suite)
    problems: list[str] = []
    bases = []
    for row in itertools.product(*_base_axes(suite)):
        settings = [s for part in row for s in part]
        config = _resolve(defaults, settings, problems)
        if config is not None:
            bases.append((settings, config.method.name))
    _raise_if(problems)
    methods = sorted({method for _, method in bases})
    _raise_if([f"ablations.{key}: applies to no method of the suite (its methods: {', '.join(methods)}); "
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
    _raise_if(problems)
    cells = _excluded(suite.exclude, cells)
    _check_unique(cells, _axis_paths(suite))
    if checks is not None:
        _raise_if(_checked(suite, [(cell, made_by[cell.id]) for cell in cells], checks))
    return cells


def _checked(suite: Suite, cells: list[tuple[Cell, list[_Setting]]], checks: Checks) -> list[str]:
    """What ``checks`` find in the cells (each made by its settings) and in the detection stage, by suite key path."""
    evaluated = suite.evaluations.model_fields_set if suite.evaluations else set()
    lines = [_attribute(line, settings, evaluated) for cell, settings in cells for line in checks.cell(cell.config)]
    stage = suite.evaluations.detection if suite.evaluations else None
    if stage is not None:
        lines += [f"evaluations.detection.{line}" for line in checks.detection(stage)]
    return lines


def _apply(data: dict[str, Any], settings: Sequence[_Setting]) -> dict[str, Any]:
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


def _resolve(defaults: dict[str, Any], settings: Sequence[_Setting], problems: list[str]) -> RunConfig | None:
    """The resolved config of one cell, or None with its problems appended, each naming the suite key."""
    try:
        return resolve_run_config(_apply(defaults, settings))
    except ConfigError as err:
        problems += [_attribute(line, settings) for line in _lines(str(err))]
        return None


def _attribute(line: str, settings: Sequence[_Setting], evaluated: Set[str] = frozenset()) -> str:
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


def _matches(rule: dict[str, Any], axes: dict[str, Any]) -> bool:
    return all(key in axes and axes[key] == value for key, value in rule.items())


def _excluded(rules: list[dict[str, Any]], cells: list[Cell]) -> list[Cell]:
    """The cells that no exclude rule matches; a rule matching nothing, or leaving nothing, is a problem."""
    lines = [f"exclude.{i}: matches no cell (check its values)" for i, rule in enumerate(rules)
             if not any(_matches(rule, cell.axes) for cell in cells)]
    kept = [cell for cell in cells if not any(_matches(rule, cell.axes) for rule in rules)]
    if cells and not kept:
        lines.append("exclude: removes every cell of the suite; narrow its rules")
    _raise_if(lines)
    return kept


def _check_unique(cells: list[Cell], paths: dict[str, str]) -> None:
    """Two cells with one id are the same run: the axis values that tell them apart change nothing."""
    first: dict[str, Cell] = {}
    lines = []
    for cell in cells:
        other = first.setdefault(cell.id, cell)
        if other is not cell:
            differ = [paths[key] for key in paths if other.axes.get(key) != cell.axes.get(key)]
            lines.append(f"{', '.join(differ)}: the cells {other.axes} and {cell.axes} are the same run ({cell.id}); "
                         "drop the value that changes nothing")
    _raise_if(lines)


def _check_search(search: SearchConfig, cells: list[Cell], checks: Checks | None) -> None:
    """A search suite has one base cell, a search space of valid run-config keys, and kNN for its pruner."""
    if len(cells) != 1:
        raise _Problems([f"search: a search suite expands to one base cell, this one to {len(cells)}; move the axes into search.space"])
    base = cells[0].config
    data = base.model_dump(mode="json")
    problems = []
    for key, param in search.space.items():
        if not DOTTED_KEY.fullmatch(key):
            problems.append(f"search.space.{key}: not a dotted key; write names joined by dots, e.g. optimizer.lr")
            continue
        for value in param.choices or [param.low, param.high]:
            setting = _Setting(f"search.space.{key}", key, _run_key(key), value)
            config = _resolve(data, [setting], problems)
            if config is not None and checks is not None:
                problems += [_attribute(line, [setting]) for line in checks.cell(config)]
    if search.pruner != "none" and base.train.knn_every == 0:
        problems.append(f"search.pruner: the {search.pruner} pruner acts on the online kNN, which is off; "
                        "set defaults.train.knn_every (e.g. 1) or search.pruner: none")
    _raise_if(problems)

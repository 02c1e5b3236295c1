"""The baseline cells of a suite (``baselines: [random_init, raw_pixels]``; the methods: bench/methods/baselines.py).

Each baseline is a cell per (dataset, backbone, evaluations) of the suite's cells: ``random_init`` one per seed of
those cells, with their backbone; ``raw_pixels`` one, with seed 0, whatever the backbone (it has none). A baseline's
config keeps only what its numbers depend on: the dataset, the backbone (random init), the ``eval`` section, the
seed (random init) and the engine settings that change nothing (``ENGINE_ONLY``: device, threads, workers, ...).
Every other key takes its default, with ``epochs: 0``, so the suite method's hyper-parameters, optimizer, views and
batch size never reach it: two suites that evaluate the same backbone on the same data the same way hold the same
baseline cells (one id, computed once). Raw pixels are average-pooled to ``PIXELS_SIZE`` when an evaluated set's
images are larger than ``PIXELS_ABOVE`` px (``docs/protocols.md`` §3.2), recorded as ``method.pixels_size``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bench.config.run import ENGINE_ONLY, RunConfig, config_id, resolve_run_config
from bench.data.registry import image_shape
from bench.methods.baselines import Baseline

#: the side raw pixels are pooled to, for images larger than ``PIXELS_ABOVE`` px
PIXELS_SIZE, PIXELS_ABOVE = 32, 64
#: the run-config sections a baseline keeps from the cell it is made for
KEPT = {Baseline.RANDOM_INIT: ("dataset", "backbone", "eval"), Baseline.RAW_PIXELS: ("dataset", "eval")}

#: a cell as the suite expands it: its resolved config and its axis values
Made = tuple[RunConfig, dict[str, Any]]


def baseline_cells(cells: Iterable[Made], baselines: Sequence[Baseline]) -> list[Made]:
    """The baseline cells of ``cells``, each once: every cell of the first baseline in the cells' order, then the next.

    A baseline cell's axes are the baseline as ``method``, the axes of its source cell that set a section it keeps
    (``dataset``, ``backbone.width``), and its seed.
    """
    cells = list(cells)
    found: dict[str, Made] = {}
    for baseline in baselines:
        for config, axes in cells:
            made = baseline_config(config, baseline)
            kept = {key: value for key, value in axes.items() if key.split(".")[0] in KEPT[baseline]}
            found.setdefault(config_id(made), (made, {"method": baseline.value, **kept, "seed": made.seed}))
    return list(found.values())


def baseline_config(config: RunConfig, baseline: Baseline) -> RunConfig:
    """The config of ``baseline``'s cell for the cell ``config`` (see the module docstring)."""
    source = config.model_dump(mode="json")
    data: dict[str, Any] = {key: source[key] for key in KEPT[baseline]}
    data |= {"method": {"name": baseline.value}, "epochs": 0,
             "train": {key: value for key, value in source["train"].items() if key in ENGINE_ONLY}}
    if baseline is Baseline.RANDOM_INIT:
        data["seed"] = config.seed
    else:
        sides = [image_shape(dataset)[1] for dataset in (config.dataset, *config.eval.datasets)]
        data["method"]["pixels_size"] = PIXELS_SIZE if max(sides) > PIXELS_ABOVE else None
    return resolve_run_config(data)

"""Suite files: validation with key paths, expansion into cells, --set overrides, cell identity, search."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import resolve_run_config
from bench.config.run import config_id
from bench.suite.suite import expand_suite, load_suite, search_config, suite_from_yaml
from bench.data.cifar import CIFAR10_FILES
from bench.data.mnist import FILES as MNIST_FILES
from bench.data.registry import image_shape
from bench.errors import ConfigError
from bench.orchestrate import preflight
from bench.eval.linear import LinearConfig
from bench.eval.logreg import LogRegConfig
from bench.methods.baselines import Baseline

SUITES = Path(__file__).resolve().parents[1] / "suites"
SEARCH = """
search:
  space: {optimizer.lr: {type: float, low: 1.0e-4, high: 1.0, log: true},
          method.temperature: {type: categorical, choices: [0.1, 0.2]}}
"""
KNN = "defaults: {method: simclr, train: {knn_every: 1}}\n"

MALFORMED: list[tuple[str, str]] = [
    ("name: t\nmatirx: {method: [simclr]}", "matirx: unknown key"),
    ("name: t\ndefaults: {method: simclr, epochz: 3}", "defaults.epochz: unknown key"),
    ("name: t\ndefaults: {method: simclr, optimizer: {lrr: 0.1}}", "defaults.optimizer.lrr: unknown key"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {urll: x}", "storage.urll: unknown key"),
    ("name: t\ndefaults: {method: simclr}\nlauncher: {nam: local}", "launcher.nam: unknown key"),
    ("name: t\ndefaults: {method: simclr}\nlauncher: {slurm: {partitionn: gpu}}", "launcher.slurm.partitionn: unknown key"),
    ("name: t\n" + KNN + SEARCH + "  samplr: tpe", "search.samplr: unknown key"),
    ("name: t\n" + KNN + "search: {space: {optimizer.lr: {type: float, low: 0.1, high: 1, lg: true}}}",
     "search.space.optimizer.lr.lg: unknown key"),
    ("name: t\nmatrix: [simclr]", "matrix: Input should be a valid dictionary"),
    ("name: t\nmatrix: {method: simclr}", "matrix.method: Input should be a valid list"),
    ("name: t\ndefaults: {method: simclr}\nseeds: [0, a]", "seeds.1: Input should be a valid integer"),
    ("name: t\ndefaults: {method: simclr, epochs: ten}", "defaults.epochs: Input should be a valid integer"),
    ("name: t\nmatrix: {method: [simclr], batch_size: [64, one]}", "matrix.batch_size: Input should be a valid integer (got 'one')"),
    ("name: t\nmatrix: {method: [simclr, simclrr]}", "matrix.method: unknown method 'simclrr'; choose one of"),
    ("name: t\ndefaults: {method: simclrr}", "defaults: unknown method 'simclrr'"),
    ("name: t\ndescription: no method", "defaults.method: missing; set it"),
    ("name: t\ndefaults: {method: simclr}\nbaselines: [random_int]", "baselines.0: Input should be 'random_init' or 'raw_pixels'"),
    ("name: t\ndefaults: {method: random_init, epochs: 3}", "defaults.epochs: Value error, random_init is a baseline that learns nothing; set epochs: 0"),
    ("name: t\n" + KNN + SEARCH + "baselines: [raw_pixels]", "baselines: Value error, a search suite has no fixed cells to compare with"),
    ("name: t\nmatrix: {method: [simclr]}\nablations: {simclrr.temperature: [0.1]}",
     "ablations.simclrr.temperature: unknown method 'simclrr'"),
    ("name: t\nmatrix: {method: [simclr]}\nablations: {simclr.temperature: []}",
     "ablations.simclr.temperature: List should have at least 1 item"),
    ("name: t\nmatrix: {method: []}", "matrix.method: List should have at least 1 item"),
    ("name: t\nmatrix: {method: [simclr], optimizer.lrr: [0.1]}", "matrix.optimizer.lrr: unknown key"),
    ("name: t\nmatrix: {method: [simclr], temprature: [0.1]}", "matrix.temprature: unknown key"),
    ("name: t\nmatrix: {method.: [simclr]}", "matrix.method.: not a dotted key"),
    ("name: t\nmatrix: {method: [simclr]}\nablations: {vicreg.epochs: [1]}", "ablations.vicreg.epochs: applies to no method of the suite"),
    ("name: t\nmatrix: {method: [simclr]}\nablations: {epochs: [1]}", "ablations.epochs: expected <method>.<key>"),
    ("name: t\nmatrix: {method: [mveb]}\nablations: {mveb.betta: [0.1]}", "ablations.mveb.betta: unknown key"),
    ("name: t\nmatrix: {method: [mvmr]}\nablations: {mvmr.representations: [[raw], [rwa]]}",
     "ablations.mvmr.representations.0: Input should be 'raw'"),
    ("name: t\ndefaults: {method: simclr}\nzip: [{batch_size: [64, 128], optimizer.lr: [0.1]}]",
     "zip.0: its axes differ in length (batch_size: 2, optimizer.lr: 1)"),
    ("name: t\nmatrix: {method: [simclr], batch_size: [64]}\nzip: [{batch_size: [32, 128], epochs: [1, 2]}]",
     "zip.0.batch_size: also an axis in matrix"),
    ("name: t\ndefaults: {method: simclr}\nzip: [{epochs: [1, 2]}, {epochs: [3, 4]}]", "zip.1.epochs: also an axis in zip.0"),
    ("name: t\ndefaults: {method: simclr}\nzip: [{epochs: [1, 1], batch_size: [64, 64]}]", "zip.0: the row [1, 64] appears twice"),
    ("name: t\nmatrix: {method: [simclr, vicreg]}\nexclude: [{methd: vicreg}]", "exclude.0.methd: not an axis of the suite"),
    ("name: t\nmatrix: {method: [simclr, vicreg]}\nexclude: [{method: byol}]", "exclude.0: matches no cell"),
    ("name: t\nmatrix: {method: [simclr]}\nexclude: [{method: simclr}]", "exclude: removes every cell of the suite"),
    ("name: t\nmatrix: {method: [simclr], batch_size: [128, 128]}", "matrix.batch_size: the value 128 appears twice"),
    ("name: t\nmatrix: {method: [simclr], temperature: [0.1, 0.2]}\nablations: {simclr.temperature: [0.5]}",
     "matrix.temperature: the cells"),
    ("name: t\ndefaults: {method: simclr}\nseeds: [1, 1]", "seeds: the value 1 appears twice"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {url: 'postgres:/x'}", "storage.url: Value error, not a database URL"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {url: 'ftp://host/db'}", "storage.url: Value error, not a database URL"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {url: optuna}", "e.g. sqlite:///results/optuna.db or postgresql+psycopg2://user:password@host:5432/db"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {heartbeat_interval: 60, grace_period: 30}",
     "storage: Value error, grace_period (30 s) must exceed heartbeat_interval (60 s)"),
    ("name: t\ndefaults: {method: simclr}\ntracking: {mlflow_uri: 'ftp://host/mlruns'}",
     "tracking.mlflow_uri: Value error, unsupported URI scheme 'ftp'"),
    ("name: t\ndefaults: {method: simclr}\nlauncher: {name: k8s}", "launcher.name: Input should be 'local', 'slurm' or 'print'"),
    ("name: t\ndefaults: {method: simclr}\nlauncher: {workers: 0}", "launcher.workers: Input should be greater than or equal to 1"),
    ("name: t\n" + KNN + "search: {space: {optimizer.lrr: {type: float, low: 0.1, high: 1}}}", "search.space.optimizer.lrr: unknown key"),
    ("name: t\n" + KNN + "search: {space: {batch_size: {type: categorical, choices: [64, big]}}}",
     "search.space.batch_size: Input should be a valid integer"),
    ("name: t\n" + KNN + "search: {space: {optimizer.lr: {type: float, low: 1.0, high: 0.1}}}",
     "search.space.optimizer.lr: Value error, low (1.0) must be below high (0.1)"),
    ("name: t\n" + KNN + "search: {space: {optimizer.lr: {type: float, low: 0, high: 1, log: true}}}",
     "search.space.optimizer.lr: Value error, a log-scale range needs low > 0"),
    ("name: t\n" + KNN + "search: {space: {batch_size: {type: int, low: 64.5, high: 256}}}",
     "search.space.batch_size: Value error, an int parameter takes integer low, high and step"),
    ("name: t\n" + KNN + "search: {space: {method.temperature: {type: categorical, choices: []}}}",
     "search.space.method.temperature: Value error, a categorical parameter needs a non-empty list of choices"),
    ("name: t\n" + KNN + SEARCH + "  sampler: cmaes", "search.sampler: Input should be 'tpe', 'random' or 'grid'"),
    ("name: t\n" + KNN + SEARCH + "  pruner: asha", "search.pruner: Input should be 'median', 'hyperband' or 'none'"),
    ("name: t\n" + KNN + SEARCH + "  sampler: grid", "search: Value error, the grid sampler needs categorical or int-with-step"),
    ("name: t\ndefaults: {method: simclr}\n" + SEARCH, "search.pruner: the median pruner acts on the online kNN, which is off"),
    ("name: t\n" + KNN + "seeds: [0, 1]\n" + SEARCH, "search: a search suite expands to one base cell, this one to 2"),
    ("name: t\ndefaults: {method: simclr\n", "invalid YAML at line 3"),
    ("- name: t", "got a list"),
    ("", "got an empty file"),
    ("description: x\ndefaults: {method: simclr}", "name: required key is missing"),
    ("name: my suite\ndefaults: {method: simclr}", "name: Value error, use only letters, digits"),
    ("name: t\ndefaults: {method: simclr, dataset: imagenet21k}", "defaults: unknown dataset 'imagenet21k'"),
    ("name: t\ndefaults: {method: simclr}\nmatrix: {dataset: [shapes, imagenet21k]}", "matrix.dataset: unknown dataset 'imagenet21k'"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {knn_kk: [5]}", "evaluations.knn_kk: unknown key"),
    ("name: t\ndefaults: {method: simclr}\nmatrix: {epochs.x: [1]}", "matrix.epochs.x: epochs: Input should be a valid integer"),
    ("name: t\ndefaults: {method: simclr, epochs: 3}\nmatrix: {epochs.x: [1]}", "matrix.epochs.x: bad override"),
    # the file: UTF-8 text, one value per key, something in it
    (b"name: t\ndefaults: {method: simclr}\ndescription: caf\xe9\n", "line 3 is not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    ("name: t".encode("utf-16"), "line 1 is not UTF-8 text"),
    ("name: t\ndefaults: {method: simclr}\nname: u", "invalid YAML at line 3, column 1: the key 'name' is given twice (first at line 1)"),
    ("name: t\ndefaults:\n  method: simclr\n  epochs: 1\n  epochs: 2\n", "line 5, column 3: the key 'epochs' is given twice (first at line 4)"),
    ("name: t\ndefaults: {method: {name: simclr, temperature: 0.1, temperature: 0.2}}", "the key 'temperature' is given twice"),
    ("name: t\ndescription: a\x00b\ndefaults: {method: simclr}", "line 2 holds the control character U+0000"),
    ("# only a comment\n", "got an empty file"),
    # strict types: no lax cast hides a mistake
    ("name: t\ndefaults: {method: simclr, epochs: true}", "defaults.epochs: Input should be a valid integer (got True)"),
    ("name: t\ndefaults: {method: simclr, batch_size: 1.5}", "defaults.batch_size: Input should be a valid integer (got 1.5)"),
    ("name: t\ndefaults: {method: simclr, train: {knn_every: '3'}}", "defaults.train.knn_every: Input should be a valid integer (got '3')"),
    ("name: t\ndefaults: {method: simclr, train: {deterministic: 1}}", "defaults.train.deterministic: Input should be a valid boolean (got 1)"),
    ("name: t\ndefaults: {method: {name: simclr, temperature: '0.5'}}", "defaults.method.temperature: Input should be a valid number (got '0.5')"),
    ("name: t\ndefaults: {method: simclr}\nseeds: [true]", "seeds.0: Input should be a valid integer (got True)"),
    ("name: t\ndefaults: {method: simclr}\nlauncher: {workers: '2'}", "launcher.workers: Input should be a valid integer (got '2')"),
    ("name: t\ndefaults: {method: simclr}\nstorage: {heartbeat_interval: 1.5}", "storage.heartbeat_interval: Input should be a valid integer"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {detection: {synthetic: {n_train: true}}}",
     "evaluations.detection.synthetic.n_train: Input should be a valid integer (got True)"),
    ("name: t\n" + KNN + "search: {space: {batch_size: {type: int, low: true, high: 256}}}", "search.space.batch_size.low: Input should be a valid number"),
    # finite floats everywhere
    ("name: t\ndefaults: {method: {name: simclr, temperature: .inf}}", "defaults.method.temperature: Input should be a finite number (got inf)"),
    ("name: t\ndefaults: {method: simclr, optimizer: {lr: .nan}}", "defaults.optimizer.lr: Input should be a finite number (got nan)"),
    ("name: t\ndefaults: {method: simclr}\nmatrix: {optimizer.weight_decay: [0.0, -.inf]}", "matrix.optimizer.weight_decay: Input should be a finite number"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {knn_temperature: .nan}", "evaluations.knn_temperature: Input should be a finite number"),
    ("name: t\n" + KNN + "search: {space: {optimizer.lr: {type: float, low: 1.0e-4, high: .inf}}}",
     "search.space.optimizer.lr.high: Input should be a finite number (got inf)"),
    ("name: t\n" + KNN + "search: {space: {method.temperature: {type: categorical, choices: [0.1, .nan]}}}",
     "search.space.method.temperature: Input should be a finite number (got nan)"),
    # every head spec, method and backbone builds (on the meta device)
    ("name: t\ndefaults: {method: {name: simclr, projector: 512-abc}}",
     "defaults.method.projector: Value error, not a head spec; write positive widths joined by '-', e.g. 2048-2048"),
    ("name: t\nmatrix: {method: [simclr, vicreg], projector: ['0-128']}", "matrix.projector: Value error, not a head spec"),
    ("name: t\nmatrix: {method: [byol]}\nablations: {byol.predictor: ['4096-256', '4096-64']}",
     "ablations.byol.predictor: byol: method.predictor '4096-64' must end at the projector width 256"),
    ("name: t\ndefaults: {method: {name: simsiam, predictor: '512-64'}}", "defaults.method.predictor: simsiam: method.predictor '512-64' must end"),
    ("name: t\ndefaults: {method: {name: wmse, w_size: 32}}", "defaults.method.w_size: wmse: method.w_size 32 must exceed the embedding width 64"),
    ("name: t\ndefaults: {method: byol, train: {knn_every: 1}}\nsearch: {space: {method.predictor: {type: categorical, choices: ['64-256', '64']}}}",
     "search.space.method.predictor: byol: method.predictor '64' must end at the projector width 256"),
    ("name: t\ndefaults: {method: simclr, train: {knn_every: 1}}\nsearch: {space: {method.projector: {type: categorical, choices: ['8', 'x']}}}",
     "search.space.method.projector: Value error, not a head spec"),
    # every on-disk dataset's root and the files its loader needs
    ("name: t\ndefaults: {method: simclr, dataset: {name: imagefolder}}",
     "defaults.dataset.root: dataset 'imagefolder' is read from disk: set dataset.root to the folder holding its files"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: cifar10, root: '{data}/cifar10'}}",
     "defaults.dataset.root: {data}/cifar10/cifar-10-batches-py lacks data_batch_1 (expected files: data_batch_1,"),
    ("name: t\ndefaults: {method: simclr}\nmatrix: {dataset: [shapes, {name: cifar100, root: '{data}/nowhere'}]}",
     "matrix.dataset.root: dataset root {data}/nowhere does not exist or is not a directory; expected cifar-100-python/"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: stl10, root: '{data}/stl10', pretrain_split: train+unlabeled}}",
     "defaults.dataset.root: {data}/stl10/stl10_binary lacks unlabeled_X.bin"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: stl10, root: '{data}/stl10', pretrain_split: unlabelled}}",
     "defaults.dataset.pretrain_split: dataset.pretrain_split='unlabelled' is not available for stl10"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: mnist, root: '{data}/mnist'}}", "defaults.dataset.root: {data}/mnist lacks t10k-labels-idx1-ubyte"),
    ("name: t\ndefaults: {method: simclr, dataset: fashion_mnist}", "defaults.dataset.root: dataset 'fashion_mnist' is read from disk"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: imagefolder, root: '{data}/empty'}}",
     "defaults.dataset.root: {data}/empty has neither train/ and val/ folders nor wnids.txt"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: imagefolder, root: '{data}/imagenet', classes_file: '{data}/classes.txt'}}",
     "defaults.dataset.classes_file: classes file {data}/classes.txt does not exist"),
    ("name: t\ndefaults: {method: simclr, dataset: {name: imagefolder, root: '{data}/tiny'}}",
     "defaults.dataset.root: {data}/tiny lacks val/val_annotations.txt"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {datasets: [{name: cifar10}]}", "evaluations.datasets.0.root: dataset 'cifar10' is read from disk"),
    ("name: t\ndefaults: {method: simclr, eval: {datasets: [{name: digits}, {name: mnist, root: '{data}/nowhere'}]}, dataset: digits}",
     "defaults.eval.datasets.1.root: dataset root {data}/nowhere does not exist"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {datasets: [{name: digits}]}",
     "evaluations.datasets.0.name: digits has 1-channel images but the backbone is pre-trained on 3-channel shapes images"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {detection: {coco: {root: '{data}/coco'}}}",
     "evaluations.detection.coco.root: COCO annotation file {data}/coco/annotations/instances_val2017.json not found; get COCO 2017"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {detection: {coco: {root: '{data}/coco', val_split: train2017, train_split: val}}}",
     "evaluations.detection.coco.root: image folder {data}/coco/val not found"),
    ("name: t\ndefaults: {method: simclr}\nevaluations: {detection: {coco: {root: '{data}/nowhere'}}}",
     "evaluations.detection.coco.root: dataset root {data}/nowhere does not exist"),
]
#: how each malformed suite is given to the command line, in turn: every command refuses a share of them
COMMANDS = [["validate"], ["run"], ["run", "--dry-run"], ["search"]]


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def axes_and_values(cells, *getters):
    return [(c.axes, *(g(c.config) for g in getters)) for c in cells]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Dataset folders, each short of a file its loader needs (the files are empty: the preflight reads none)."""
    root = tmp_path_factory.mktemp("data")
    layouts = {
        "cifar10/cifar-10-batches-py": CIFAR10_FILES.train[1:] + (CIFAR10_FILES.test, CIFAR10_FILES.meta),
        "stl10/stl10_binary": ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt"),
        "mnist": MNIST_FILES[:3],
        "tiny": ("wnids.txt", "train/n01/images/a.png"),
        "imagenet": ("train/a/1.png", "val/a/1.png"),
        "coco": ("annotations/instances_train2017.json", "train2017/1.png", "annotations/instances_val.json"),
        "empty": (),
    }
    for folder, files in layouts.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).touch()
    return root


@pytest.mark.parametrize("i, text, fragment", [(i, t, f) for i, (t, f) in enumerate(MALFORMED)],
                         ids=[f"{i:02d}-{f[:40]}" for i, (_, f) in enumerate(MALFORMED)])
def test_malformed_suite_is_refused_before_anything_is_written(i, text, fragment, data, tmp_path, monkeypatch, capsys):
    """Through the command line in this process: exit 2, the key path and the fix in the message, nothing written."""
    path = tmp_path / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.replace("{data}", str(data)).encode())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    command, *options = COMMANDS[i % len(COMMANDS)]
    assert main([command, str(path), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and "Traceback" not in err
    assert fragment.replace("{data}", str(data)) in " ".join(err.split())
    assert not any(work.iterdir())


def test_every_problem_is_listed_one_line_each(tmp_path):
    path = write(tmp_path, "name: t\nmatrix: {method: [simclr], optimizer.lrr: [0.1], epochs: [1, zero]}\nlauncher: {workers: 0}")
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert str(err.value).splitlines()[1:] == ["  launcher.workers: Input should be greater than or equal to 1 (got 0)"]
    path = write(tmp_path, "name: t\nmatrix: {method: [simclr], optimizer.lrr: [0.1], epochs: [1, zero]}")
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: invalid suite (2 problems):"
    assert lines[1:] == ["  matrix.optimizer.lrr: unknown key (check its spelling)",
                         "  matrix.epochs: Input should be a valid integer (got 'zero')"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_matrix_is_the_cartesian_product_in_order(tmp_path):
    path = write(tmp_path, """
name: grid
defaults: {dataset: {name: shapes, n_train: 100}, epochs: 2}
matrix:
  method: [simclr, vicreg]
  batch_size: [64, 128]
  optimizer.lr: [0.1, 0.3]
""")
    cells = expand_suite(load_suite(path))
    assert len(cells) == 8
    got = axes_and_values(cells, lambda c: c.method.name, lambda c: c.batch_size, lambda c: c.optimizer.lr)
    expected = [({"method": m, "batch_size": b, "optimizer.lr": lr, "seed": 0}, m, b, lr)
                for m in ("simclr", "vicreg") for b in (64, 128) for lr in (0.1, 0.3)]
    assert got == expected
    assert all(c.config.epochs == 2 and c.config.dataset.n_train == 100 for c in cells)
    assert cells[0].config.optimizer.name == "lars"  # the rest of the optimizer stays simclr's own
    assert len({c.id for c in cells}) == 8


def test_bare_hyper_parameter_and_method_defaults(tmp_path):
    path = write(tmp_path, """
name: heads
defaults: {method: {name: simclr, temperature: 0.3}}
matrix: {method: [simclr, vicreg], projector: ["64-32", "128-32"]}
""")
    cells = expand_suite(load_suite(path))
    got = [(c.config.method.name, c.config.method.projector, getattr(c.config.method, "temperature", None)) for c in cells]
    assert got == [("simclr", "64-32", 0.3), ("simclr", "128-32", 0.3), ("vicreg", "64-32", None), ("vicreg", "128-32", None)]


def test_ablations_multiply_the_cells_of_one_method(tmp_path):
    path = write(tmp_path, """
name: abl
matrix: {method: [simclr, vicreg, mvmr]}
ablations:
  simclr.temperature: [0.1, 0.2, 0.5]
  vicreg.epochs: [3]
  mvmr.representations: [[raw], [hog, lsd]]
  mvmr.optimizer.lr: [0.01]
seeds: [0, 1]
""")
    cells = expand_suite(load_suite(path))
    assert len(cells) == (3 + 1 + 2) * 2
    simclr = [c for c in cells if c.config.method.name == "simclr"]
    assert [(c.config.method.temperature, c.config.seed) for c in simclr] == [(t, s) for t in (0.1, 0.2, 0.5) for s in (0, 1)]
    assert {c.config.epochs for c in simclr} == {100}
    assert [c.axes for c in cells if c.config.method.name == "vicreg"] == [
        {"method": "vicreg", "vicreg.epochs": 3, "seed": 0}, {"method": "vicreg", "vicreg.epochs": 3, "seed": 1}]
    assert all(c.config.epochs == 3 for c in cells if c.config.method.name == "vicreg")
    mvmr = [c for c in cells if c.config.method.name == "mvmr"]
    assert [c.config.method.representations for c in mvmr] == [["raw"], ["raw"], ["hog", "lsd"], ["hog", "lsd"]]
    assert mvmr[0].axes == {"method": "mvmr", "mvmr.representations": ["raw"], "mvmr.optimizer.lr": 0.01, "seed": 0}
    assert all(c.config.optimizer.lr == 0.01 for c in mvmr)


def test_zip_exclude_and_seeds(tmp_path):
    path = write(tmp_path, """
name: zipped
matrix: {method: [simclr, supervised]}
zip: [{batch_size: [64, 128, 256], optimizer.lr: [0.1, 0.2, 0.4]}]
exclude: [{method: supervised, batch_size: 256}, {method: simclr, seed: 2}]
seeds: [1, 2]
""")
    cells = expand_suite(load_suite(path))
    got = [(c.axes["method"], c.config.batch_size, c.config.optimizer.lr, c.config.seed) for c in cells]
    assert got == [("simclr", 64, 0.1, 1), ("simclr", 128, 0.2, 1), ("simclr", 256, 0.4, 1),
                   ("supervised", 64, 0.1, 1), ("supervised", 64, 0.1, 2), ("supervised", 128, 0.2, 1), ("supervised", 128, 0.2, 2)]


def test_seed_without_seeds_comes_from_the_defaults(tmp_path):
    cells = expand_suite(load_suite(write(tmp_path, "name: s\ndefaults: {method: byol, seed: 7}")))
    assert [(c.axes, c.config.seed) for c in cells] == [({"seed": 7}, 7)]


def test_evaluations_merge_over_defaults_eval(tmp_path):
    path = write(tmp_path, """
name: ev
defaults: {method: simclr, eval: {probes: [{name: linear, epochs: 50, lrs: [0.1]}], knn_k: [10]}}
evaluations: {probes: [logreg, {name: linear, epochs: 5}], label_fractions: [0.1]}
""")
    (cell,) = expand_suite(load_suite(path))
    assert cell.config.eval.probes == [LogRegConfig(), LinearConfig(epochs=5)]  # a list is replaced, not merged
    assert cell.config.eval.knn_k == [10] and cell.config.eval.label_fractions == [0.1]


def test_set_fixes_axes_and_sets_suite_keys(tmp_path):
    path = write(tmp_path, """
name: full
defaults: {dataset: {name: shapes, n_train: 5000}}
matrix: {method: [simclr, vicreg], batch_size: [256, 512], dataset: [shapes, digits]}
ablations: {vicreg.epochs: [300], simclr.temperature: [0.2]}
exclude: [{method: vicreg, batch_size: 512}]
seeds: [0, 1, 2]
""")
    assert len(expand_suite(load_suite(path))) == 2 * 2 * 3 + 2 * 2 * 3 - 2 * 3
    sets = ["epochs=1", "batch_size=32", "dataset=shapes", "dataset.n_train=100", "seeds=[5]", "launcher.workers=3", "name=smoke"]
    suite = load_suite(path, sets)
    assert (suite.name, suite.launcher.workers, suite.seeds) == ("smoke", 3, [5])
    assert suite.exclude == [] and suite.ablations == {"simclr.temperature": [0.2]}
    cells = expand_suite(suite)
    got = axes_and_values(cells, lambda c: c.epochs, lambda c: c.batch_size, lambda c: (c.dataset.name, c.dataset.n_train))
    assert got == [({"method": "simclr", "simclr.temperature": 0.2, "seed": 5}, 1, 32, ("shapes", 100)),
                   ({"method": "vicreg", "seed": 5}, 1, 32, ("shapes", 100))]


def test_set_method_and_seed_drop_their_axes(tmp_path):
    path = write(tmp_path, """
name: m
matrix: {method: [simclr, vicreg]}
ablations: {vicreg.epochs: [3], simclr.epochs: [4], simclr.temperature: [0.2]}
seeds: [0, 1]
""")
    cells = expand_suite(load_suite(path, ["method=simclr", "seed=4", "method.temperature=0.7"]))
    assert axes_and_values(cells, lambda c: c.method.temperature, lambda c: c.epochs) == [
        ({"simclr.epochs": 4, "seed": 4}, 0.7, 4)]


def test_bad_set(tmp_path):
    path = write(tmp_path, "name: t\ndefaults: {method: simclr, epochs: 3}")
    with pytest.raises(ConfigError) as err:
        load_suite(path, ["epochs", "epochs.x=1", "launcher.workers=0"])
    lines = str(err.value).splitlines()
    assert lines[1].startswith("  --set epochs: bad override 'epochs': expected key=value")
    assert lines[2].startswith("  --set epochs.x=1: bad override") and "'epochs' is a value, not a section" in lines[2]
    with pytest.raises(ConfigError, match="launcher.workers: Input should be greater than or equal to 1"):
        load_suite(path, ["launcher.workers=0"])
    with pytest.raises(ConfigError, match="--set matrix.epochs=.1, 2.: matrix cannot be set from the command line"):
        load_suite(path, ["matrix.epochs=[1, 2]"])


def test_cell_ids_are_stable_and_shared_between_suites(tmp_path):
    first = write(tmp_path, "name: a\nmatrix: {method: [simclr, vicreg]}\ndefaults: {epochs: 3}\nseeds: [0]", "a.yaml")
    second = write(tmp_path, "name: b\ndefaults: {method: simclr, epochs: 3, train: {progress: false}}\n"
                             "launcher: {name: print}\nstorage: {url: 'sqlite:///x.db'}", "b.yaml")
    ids = [c.id for c in expand_suite(load_suite(first))]
    assert ids == [c.id for c in expand_suite(load_suite(first))]
    (shared,) = expand_suite(load_suite(second))
    assert shared.id == ids[0] != ids[1]
    assert shared.id == config_id(resolve_run_config({"method": "simclr", "epochs": 3}))


def test_to_yaml_round_trips(tmp_path):
    suite = load_suite(write(tmp_path, """
name: rt
description: round trip
defaults: {method: simclr, optimizer: {lr: 1.0e-5}}
matrix: {batch_size: [64, 128]}
evaluations: {knn_k: [5]}
storage: {url: 'postgresql://user:pw@localhost:5432/bench'}
"""))
    again = suite_from_yaml(suite.to_yaml())
    assert again == suite
    assert [c.id for c in expand_suite(again)] == [c.id for c in expand_suite(suite)]
    assert expand_suite(again)[0].config.optimizer.lr == 1e-5


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_suites_are_valid(path):
    cells = expand_suite(load_suite(path))
    assert cells and len({c.id for c in cells}) == len(cells)


@pytest.mark.parametrize("name, n_cells, n_models", [("sidae_main", 45, 6), ("baselines_cifar10", 16, 16)])
def test_preflight_builds_each_distinct_model_once_and_misses_only_the_data(name, n_cells, n_models, monkeypatch):
    """Every method of the baselines and SidAE's 45 cells build on the meta device, each distinct model once; the
    only problems left are the dataset roots, which are not on this machine (the baseline cells, on the same data,
    are checked once the suite's own cells pass: test_preflight_checks_the_baseline_cells)."""
    built = []
    build = preflight._build_problems
    monkeypatch.setattr(preflight, "_build_problems", lambda *args: built.append(args) or build(*args))
    cells = [c for c in expand_suite(load_suite(SUITES / f"{name}.yaml")) if c.config.method.name not in set(Baseline)]
    with pytest.raises(ConfigError) as err:
        load_suite(SUITES / f"{name}.yaml", checks=preflight.suite_checks())
    problems = str(err.value).splitlines()[1:]
    assert problems and all(re.match(r"  (defaults|zip\.0)\.dataset\.root: dataset root data/\w+ does not exist", line) for line in problems)
    models = {(c.config.method.model_dump_json(), c.config.backbone.model_dump_json(), image_shape(c.config.dataset)) for c in cells}
    assert (len(cells), len(models), len(built)) == (n_cells, n_models, n_models)


def test_preflight_checks_the_baseline_cells(monkeypatch):
    """The quickstart's data is generated: its preflight passes, and builds the baselines' models too."""
    built = []
    build = preflight._build_problems
    monkeypatch.setattr(preflight, "_build_problems", lambda *args: built.append(args) or build(*args))
    load_suite(SUITES / "quickstart.yaml", checks=preflight.suite_checks())
    assert {method.name for method, _, _ in built} == {"simclr", "vicreg", "barlow_twins", "supervised", *Baseline}


def test_baseline_cells_are_shared_by_the_cells_that_evaluate_alike(tmp_path):
    """random init: a cell per dataset, backbone, evaluations and seed; raw pixels: per dataset and evaluations. What
    a method trains with (its hyper-parameters, optimizer, epochs) never reaches them."""
    path = write(tmp_path, """
name: b
defaults: {dataset: {name: shapes, n_train: 100}, epochs: 2}
evaluations: {knn_k: [5]}
matrix: {method: [simclr, vicreg], backbone.width: [4, 8]}
ablations: {simclr.optimizer.lr: [0.1, 0.2]}
seeds: [0, 1]
baselines: [random_init, raw_pixels]
""")
    cells = expand_suite(load_suite(path))
    baselines = [c for c in cells if c.config.method.name in set(Baseline)]
    assert len(cells) - len(baselines) == 12
    assert [(c.axes["method"], c.axes.get("backbone.width"), c.axes["seed"]) for c in baselines] == [
        ("random_init", 4, 0), ("random_init", 4, 1), ("random_init", 8, 0), ("random_init", 8, 1), ("raw_pixels", None, 0)]
    assert all(c.config.epochs == 0 and c.config.optimizer == baselines[0].config.optimizer for c in baselines)
    assert baselines[0].config.backbone.width == 4 and baselines[2].config.backbone.width == 8
    alone = write(tmp_path, "name: c\ndefaults: {method: byol, dataset: {name: shapes, n_train: 100}, epochs: 5, "
                            "backbone: {width: 8}}\nevaluations: {knn_k: [5]}\nseeds: [1]\nbaselines: [random_init]", "c.yaml")
    assert expand_suite(load_suite(alone))[1].id == baselines[3].id  # another suite, method and epochs: one cell


def test_exponent_floats_are_numbers_and_text_stays_text(tmp_path):
    """YAML 1.1 reads 1e-3 as text; a config reads it as the number it means, and a text that looks so stays text."""
    suite = load_suite(write(tmp_path, "name: e\ndescription: '1e-3'\ndefaults: {method: simclr, optimizer: {lr: 1e-3, weight_decay: 5E-4}}"))
    (cell,) = expand_suite(suite)
    assert (cell.config.optimizer.lr, cell.config.optimizer.weight_decay) == (0.001, 0.0005)
    assert suite_from_yaml(suite.to_yaml()).description == "1e-3"
    (cell,) = expand_suite(load_suite(write(tmp_path, "name: e\ndefaults: {method: simclr}"), ["optimizer.lr=2e-3"]))
    assert cell.config.optimizer.lr == 0.002


def test_console_script_refuses_a_suite_that_is_no_text(tmp_path):
    """The installed entry point (a fresh process) gives the same one-line refusal and writes nothing."""
    path = tmp_path / "suite.yaml"
    path.write_bytes(b"name: t\n\xff\xfe\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(path)], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and not any(work.iterdir())
    assert done.stderr.strip() == f"error: {path}: line 2 is not UTF-8 text (byte 0xff); save the file as UTF-8"


def test_search_suite_and_search_config(tmp_path):
    path = write(tmp_path, "name: hp\n" + KNN + SEARCH + "  n_startup_trials: 2\n")
    suite = load_suite(path)
    assert suite.search.n_trials == 20 and suite.search.space["optimizer.lr"].grid() is None
    (base,) = expand_suite(suite)
    config = search_config(base.config, {"optimizer.lr": 0.05, "method.temperature": 0.2})
    assert (config.optimizer.lr, config.method.temperature) == (0.05, 0.2)
    expected = base.config.model_dump()
    expected["optimizer"]["lr"], expected["method"]["temperature"] = 0.05, 0.2
    assert config.model_dump() == expected
    with pytest.raises(ConfigError, match="optimizer.lr"):
        search_config(base.config, {"optimizer.lr": "fast"})


def test_grid_search_counts_its_trials(tmp_path):
    path = write(tmp_path, "name: g\n" + KNN + """
search:
  space: {batch_size: {type: int, low: 64, high: 256, step: 64}, method.temperature: {type: categorical, choices: [0.1, 0.2]}}
  sampler: grid
  pruner: none
""")
    search = load_suite(path).search
    assert search.space["batch_size"].grid() == [64, 128, 192, 256]
    assert search.n_trials == 8

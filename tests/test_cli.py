"""The command line: one clear message and exit code 2 for every bad input a user can make."""

import json
import subprocess
import sys

import pytest

from bench.cli import main
from bench.runner import METRICS

TINY = ["--set", "dataset.n_train=128", "--set", "dataset.n_test=40", "--set", "backbone.width=4", "--set", "batch_size=32",
        "--set", "epochs=1", "--set", "method.projector=16-8", "--set", "eval.probes=[logreg, {name: linear, epochs: 2}]", "--set", "train.progress=false"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--method", "simclrr", "--dataset", "shapes"], "unknown method 'simclrr'; choose one of"),
        (["train", "--method", "simclr", "--dataset", "imagenet22k"], "unknown dataset 'imagenet22k'"),
        (["train", "--method", "simclr", "--dataset", "cifar10"], "dataset.root"),
        (["train", "--method", "simclr", "--set", "epohcs=3"], "epohcs: unknown key"),
        (["train", "--method", "simclr", "--set", "optimizer.lr=-1"], "optimizer.lr"),
        (["train", "--method", "simclr", "--set", "augment=nosuchrecipe"], "unknown view recipe"),
    ],
)
def test_bad_input_gives_one_message_and_exit_code_2(argv, fragment, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_dataset_root_names_the_expected_files(capsys, tmp_path):
    assert main(["train", "--method", "simclr", "--dataset", "cifar10", "--set", f"dataset.root={tmp_path / 'nowhere'}",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "data_batch_1" in err


def test_truncated_dataset_file(capsys, tmp_path):
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    for name in ["train_X.bin", "test_X.bin"]:
        (stl / name).write_bytes(bytes(27648 * 2 + 100))  # not a whole number of images
    for name in ["train_y.bin", "test_y.bin"]:
        (stl / name).write_bytes(bytes([1, 2]))
    (stl / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    assert main(["train", "--method", "simclr", "--dataset", "stl10", "--set", f"dataset.root={tmp_path}",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train_X.bin" in err


def test_bad_yaml_file(capsys, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("method: simclr\n  epochs: [1, 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "invalid YAML at line 2" in capsys.readouterr().err


def test_train_prints_metrics_and_writes_them(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--method", "vicreg", "--dataset", "shapes", "--out", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "knn20.top1" in out and "linear.top1" in out
    report = json.loads((run_dir / METRICS).read_text())
    assert report["status"] == "complete" and 0 <= report["metrics"]["knn20.top1"] <= 1
    assert report["config"]["method"]["name"] == "vicreg"


def test_console_script_exit_code():
    done = subprocess.run([sys.executable, "-m", "bench.cli", "train", "--method", "nope"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown method 'nope'")

"""A cell's fingerprint: the git state of a real scratch repository, dataset content hashes (in memory and a folder
with its on-disk cache), the record's id and tags."""

from __future__ import annotations

import subprocess

import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.data import content_hash
from bench.data.base import ImageSet
from bench.data.content_hash import CACHE_FOLDER, dataset_hashes
from bench.data.folder import FolderSet
from bench.data.registry import DatasetSplits, load_dataset
from bench.tracking import fingerprint as fp
from bench.tracking.fingerprint import ID_TAG, UNKNOWN, code_state, fingerprint, fingerprint_id, fingerprint_tags

CPU = torch.device("cpu")


def git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_code_state_follows_tracked_edits_and_untracked_files_not_ignored_ones(repo):
    clean = code_state(repo)
    assert clean.dirty is False and clean.untracked == 0 and len(clean.commit) == 40 and clean.diff == b""
    assert code_state(repo) == clean  # stable
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_bytes(b"\0" * 100)
    assert code_state(repo / "ignored") == clean  # from a subfolder, ignoring ignored files
    (repo / "code.py").write_text("x = 2\n")
    edited = code_state(repo)
    assert edited.dirty is True and edited.diff_sha256 != clean.diff_sha256 and b"+x = 2" in edited.diff
    (repo / "notes.txt").write_text("a")
    with_new = code_state(repo)
    assert with_new.untracked == 1 and with_new.diff_sha256 != edited.diff_sha256 and with_new.diff == edited.diff
    (repo / "notes.txt").write_text("b")
    assert code_state(repo).diff_sha256 != with_new.diff_sha256  # an untracked file's content counts


def test_no_git_or_no_repository_is_unknown(tmp_path, monkeypatch):
    assert code_state(tmp_path).commit == UNKNOWN  # not a repository
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git executable
    state = code_state(tmp_path)
    assert (state.commit, state.branch, state.dirty, state.diff_sha256, state.untracked) == (UNKNOWN,) * 5


def images(seed: int, n: int = 6) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    return ImageSet("toy", data, torch.arange(n) % 2, ["a", "b"], (0.5,) * 3, (0.2,) * 3)


def test_in_memory_hash_is_stable_and_sees_one_byte_and_one_label(tmp_path):
    train, test = images(0), images(1)
    first = dataset_hashes(DatasetSplits(pretrain=train, train=train, test=test), tmp_path)
    assert first == dataset_hashes(DatasetSplits(pretrain=train, train=train, test=images(1)), tmp_path)
    assert first["splits"]["pretrain"] == first["splits"]["train"] != first["splits"]["test"]
    byte = images(1)
    byte.images[2, 1, 3, 0] ^= 1
    changed = dataset_hashes(DatasetSplits(pretrain=train, train=train, test=byte), tmp_path)
    assert changed["splits"]["train"] == first["splits"]["train"]
    assert changed["splits"]["test"] != first["splits"]["test"] and changed["sha256"] != first["sha256"]
    label = images(1)
    label.labels[0] = 1 - label.labels[0]
    assert dataset_hashes(DatasetSplits(pretrain=train, train=train, test=label), tmp_path)["sha256"] != first["sha256"]


def test_folder_hash_is_cached_per_root_and_follows_a_changed_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    files = []
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2):
            files.append(root / "train" / cls / f"{i}.jpg")
            files[-1].write_bytes(f"{cls}{i}".encode())
    meta = {"root": str(root)}
    train = FolderSet("imagefolder", files, torch.tensor([0, 0, 1, 1]), ["cat", "dog"], meta=meta)
    test = FolderSet("imagefolder", files[1:3], torch.tensor([0, 1]), ["cat", "dog"], meta=meta)
    splits = DatasetSplits(pretrain=train, train=train, test=test)
    hashed = []
    real = content_hash.file_sha256
    monkeypatch.setattr(content_hash, "file_sha256", lambda path: hashed.append(path) or real(path))
    cache = tmp_path / "cache"
    first = dataset_hashes(splits, cache)
    assert sorted(hashed) == sorted(files) and len(list((cache / CACHE_FOLDER).iterdir())) == 1
    assert dataset_hashes(splits, cache) == first and len(hashed) == 4  # the cache answered
    files[3].write_bytes(b"a new dog")
    changed = dataset_hashes(splits, cache)
    assert len(hashed) == 8 and changed["splits"]["train"] != first["splits"]["train"]
    assert changed["splits"]["test"] == first["splits"]["test"]  # its files did not change


def test_fingerprint_record_id_and_tags(tmp_path):
    cfg = resolve_run_config(apply_overrides({}, ["method=simclr", "dataset=shapes", "dataset.n_train=64", "dataset.n_test=16", "seed=3",
                                                   f"train.cache_dir={tmp_path}"]))
    splits = load_dataset(cfg.dataset)
    settings = {"threads": 1, "deterministic": True}
    record = fingerprint(cfg, splits, settings, CPU)
    assert record == fingerprint(cfg, splits, settings, CPU)
    assert record["packages"]["torch"] == torch.__version__ and record["packages"]["cuda"] == str(torch.version.cuda)
    assert record["determinism"]["seed"] == 3 and record["determinism"]["deterministic"] is True
    assert record["hardware"]["device"] == fp.cpu_model() and record["data"]["dataset"] == "shapes"
    moved = {**record, "hardware": {**record["hardware"], "host": "elsewhere"}}
    assert fingerprint_id(moved) == record["id"]  # where it ran is no part of the id
    newer = {**record, "packages": {**record["packages"], "torch": "9.9"}}
    assert fingerprint_id(newer) != record["id"]
    assert fingerprint(cfg, splits, {**settings, "deterministic": False}, CPU)["id"] != record["id"]
    tags = fingerprint_tags(record)
    assert tags[ID_TAG] == record["id"] and tags["fingerprint.packages.torch"] == torch.__version__
    assert tags["fingerprint.data.splits.test"] == record["data"]["splits"]["test"]
    assert tags["fingerprint.determinism.deterministic"] == "true" and all(isinstance(v, str) for v in tags.values())

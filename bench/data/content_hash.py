"""Content hashes of a dataset's splits, for a cell's fingerprint (``docs/protocols.md`` §5, group ``data``).

- an in-memory split (:class:`ImageSet`): sha256 over its shape, its uint8 image bytes and its int64 labels;
- a folder split (:class:`FolderSet`): sha256 of the sorted ``(relative path, size, sha256 of the file)`` list.
  The files' own hashes are computed once per dataset root and kept under ``<cache_dir>/content_hash/``,
  keyed by the root and the sorted ``(path, size, mtime)`` of the files: a file that changes makes a new key.

The dataset's hash is the sha256 of its splits' ``name:hash`` lines, so it changes with any split
(a different validation hold-out included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from bench.core.files import write_atomic
from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.registry import DatasetSplits

CACHE_FOLDER = "content_hash"
CHUNK = 1 << 20


def dataset_hashes(splits: DatasetSplits, cache_dir: Path) -> dict[str, object]:
    """``{"sha256": <dataset>, "splits": {split name: sha256}}`` over every split the dataset has."""
    named = {f.name: getattr(splits, f.name) for f in dataclasses.fields(splits) if getattr(splits, f.name) is not None}
    folders = [s for s in named.values() if isinstance(s, FolderSet)]
    files = folder_file_hashes(folders, cache_dir) if folders else {}
    seen: dict[int, str] = {}  # pretrain is often the train split itself
    hashes = {}
    for name, split in named.items():
        if id(split) not in seen:
            seen[id(split)] = _folder_hash(split, files) if isinstance(split, FolderSet) else image_set_hash(split)
        hashes[name] = seen[id(split)]
    overall = hashlib.sha256("".join(f"{name}:{h}\n" for name, h in sorted(hashes.items())).encode())
    return {"sha256": overall.hexdigest(), "splits": hashes}


def image_set_hash(split: ImageSet) -> str:
    """sha256 over the shape, the uint8 images and the int64 labels of an in-memory split."""
    digest = hashlib.sha256(repr(tuple(split.images.shape)).encode())
    digest.update(split.images.detach().cpu().contiguous().numpy().data)
    digest.update(split.labels.detach().cpu().long().contiguous().numpy().data)
    return digest.hexdigest()


def folder_file_hashes(splits: list[FolderSet], cache_dir: Path) -> dict[Path, tuple[str, int, str]]:
    """file -> (path relative to its dataset root, size, sha256), for every file of ``splits``.

    Read from the cache when the root and every file's (path, size, mtime) are unchanged; hashed and cached else.
    """
    found: dict[Path, tuple[str, int, str]] = {}
    by_root: dict[str, dict[Path, os.stat_result]] = {}
    for split in splits:
        stats = by_root.setdefault(str(Path(split.meta["root"]).resolve()), {})
        for file in split.files:
            if file not in stats:
                stats[file] = file.stat()
    for root, stats in by_root.items():
        listing = sorted((os.path.relpath(f, root), s.st_size, s.st_mtime_ns) for f, s in stats.items())
        key = hashlib.sha256(json.dumps([root, listing]).encode()).hexdigest()
        cached = cache_dir / CACHE_FOLDER / f"{key}.json"
        if cached.is_file():
            contents = json.loads(cached.read_text())
        else:
            contents = {os.path.relpath(f, root): file_sha256(f) for f in stats}
            write_atomic(cached, json.dumps(contents))
        for file, stat in stats.items():
            relative = os.path.relpath(file, root)
            found[file] = (relative, stat.st_size, contents[relative])
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _folder_hash(split: FolderSet, files: dict[Path, tuple[str, int, str]]) -> str:
    lines = sorted(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in (files[f] for f in split.files))
    return hashlib.sha256("".join(lines).encode()).hexdigest()

"""Benchmarks read the real datasets of ../shared, unpacked once into a cache folder outside the repo."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEWLABELS_SHARED", REPO.parent / "shared"))
ARCHIVES = {"cifar10": "cifar10-jpeg.tar.gz", "mnist": "mnist-png.tar.gz"}


def unpacked(name: str) -> Path:
    """Folder with train/<class>/ and test/<class>/ for `name` (cifar10 or mnist), unpacking it on first use."""
    cache = Path(os.environ.get("FEWLABELS_UNPACKED", Path.home() / ".cache" / "fewlabels" / "unpacked")) / name
    if (cache / "train").is_dir() and (cache / ".complete").exists():
        return cache
    archive = SHARED / "data" / ARCHIVES[name]
    if not archive.is_file():
        sys.exit(f"this benchmark needs {archive} (the project's shared data folder, ../shared beside the repo); "
                 f"set FEWLABELS_SHARED to its location")
    print(f"unpacking {archive} into {cache} (once)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tf:
        tf.extractall(cache, filter="data")
    (cache / ".complete").touch()
    return cache


def shared_weights(name: str) -> Path:
    """Path of ../shared/weights/<name>-*.th."""
    hits = sorted((SHARED / "weights").glob(f"{name}-*.th"))
    if not hits:
        sys.exit(f"this benchmark needs {SHARED / 'weights'}/{name}-*.th from the project's shared folder")
    return hits[0]

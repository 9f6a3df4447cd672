"""Cache of decoded image folders: decoding 50k small JPEGs takes seconds, loading one tensor file milliseconds.

An entry is a folder ``<cache_dir>/<folder name>-<hash of root + settings>/<hash of the listing>/`` holding
``<split>.safetensors`` (tensors "images", uint8 (N, C, H, W), and "labels", int64 (N,)) and ``meta.json``
(class names, paths relative to the root). safetensors holds plain tensors only: loading runs no pickled code.

The listing hash covers every file's split, path, label, size and mtime (plus the decode settings and the cache
format through the parent folder), so adding, removing, editing or touching a file, or changing image_size, gives
a new entry. Other entries under the same parent are stale versions of the same folder: the new entry deletes them.

Each file is written under a temporary name in the entry folder and renamed with os.replace, meta.json last, so a
crash leaves either a complete entry or one without meta.json, which counts as missing. An entry that fails to
load (truncated, edited) is deleted and rebuilt, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fewlabels.data.imageset import ImageSet
from fewlabels.errors import FewLabelsError
from fewlabels.utils import write_json

CACHE_FORMAT = 1  # bump when the entry layout changes


def default_cache_dir() -> Path:
    """$FEWLABELS_CACHE, else ~/.cache/fewlabels/cache."""
    return Path(os.environ.get("FEWLABELS_CACHE") or Path.home() / ".cache" / "fewlabels" / "cache").expanduser()


def entry_for(cache_dir: str | Path | None, root: Path, settings: dict[str, Any],
              listing: Iterable[tuple[str, str, int]]) -> Path:
    """The entry folder for this root, decode settings and (split, path, label) listing; stats every file."""
    base = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    group = hashlib.sha256(json.dumps([CACHE_FORMAT, str(root), settings], sort_keys=True).encode()).hexdigest()
    files = hashlib.sha256()
    for split, path, label in listing:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # e.g. a broken link: decoding reports it; here it just hashes as unreadable
            size = mtime = -1
        files.update(f"{split}\0{path}\0{label}\0{size}\0{mtime}\n".encode())
    return base / f"{_slug(root.name)}-{group[:12]}" / files.hexdigest()[:32]


def load(entry: Path, root: Path) -> tuple[dict[str, ImageSet], dict[str, Any]] | None:
    """The cached splits and the `extra` saved with them, or None when the entry is missing or unreadable (then
    it is deleted)."""
    if not (entry / "meta.json").is_file():
        return None
    try:
        return _read(entry, root)
    except Exception as err:  # noqa: BLE001 - any failure (bad JSON, truncated tensors, wrong shapes) means rebuild
        warnings.warn(f"Cache entry {entry} could not be loaded ({type(err).__name__}: {err}); decoding again.",
                      stacklevel=3)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def save(entry: Path, splits: dict[str, ImageSet], root: Path, extra: dict[str, Any]) -> None:
    """Write the entry atomically, then delete stale entries of the same folder; a write failure only warns.

    extra: small JSON-able facts derived from the images (e.g. normalisation statistics) to keep beside them.
    """
    prefix = str(root) + os.sep
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "root": str(root), "classes": [], "splits": {}, "extra": extra}
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for split, images in splits.items():
            _save_tensors(entry / f"{split}.safetensors",
                          {"images": images.images.contiguous(), "labels": images.labels.contiguous()})
            paths = images.paths or []
            meta["classes"] = images.classes
            meta["splits"][split] = {"shape": list(images.images.shape),
                                     "paths": [p.removeprefix(prefix) for p in paths]}
        write_json(entry / "meta.json", meta)  # last: its presence marks the entry complete
    except (OSError, FewLabelsError) as err:  # write_json turns a failed write into a FewLabelsError
        warnings.warn(f"Could not write the decode cache {entry} ({err}); the next load will decode again. Point "
                      "cache_dir (or $FEWLABELS_CACHE) at a writable folder to cache.", stacklevel=3)
        return
    _remove_stale(entry)


def _read(entry: Path, root: Path) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    meta = json.loads((entry / "meta.json").read_text())
    if meta["format"] != CACHE_FORMAT:
        raise ValueError(f"cache format {meta['format']}, expected {CACHE_FORMAT}")
    prefix = str(root) + os.sep
    splits = {}
    for split, info in meta["splits"].items():
        tensors = load_file(entry / f"{split}.safetensors")
        images, labels = tensors["images"], tensors["labels"]
        if images.dtype != torch.uint8 or list(images.shape) != info["shape"] or len(labels) != len(images):
            raise ValueError(f"{split}.safetensors does not match meta.json")
        paths = [p if os.path.isabs(p) else prefix + p for p in info["paths"]]
        splits[split] = ImageSet(images, labels, list(meta["classes"]), paths or None)
    return splits, meta["extra"]


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file written to a temporary name in the same folder, synced, then renamed over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale(entry: Path) -> None:
    for other in entry.parent.iterdir():
        if other != entry and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "folder"

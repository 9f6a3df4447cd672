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

Larger than memory: a split is written in chunks of ~32 MB (its rows may be picked from a larger array, e.g. the
held-out test rows of a decoded folder), and loaded memory-mapped (copy-on-write): its images are paged in from the
file as batches read them and can be dropped again by the kernel, so a split is never read whole into RAM. A folder
being decoded goes into a memory-mapped scratch file in the entry folder (`scratch`), not into RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabels.data import imageset
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


def save(entry: Path, splits: dict[str, ImageSet], root: Path, extra: dict[str, Any],
         rows: dict[str, torch.Tensor] | None = None) -> bool:
    """Write the entry atomically, then delete stale entries of the same folder; a write failure only warns (and
    returns False).

    extra: small JSON-able facts derived from the images (e.g. normalisation statistics) to keep beside them.
    rows: for a split, which rows of its ImageSet to write, in that order (default: all), streamed without a copy.
    """
    prefix = str(root) + os.sep
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "root": str(root), "classes": [], "splits": {}, "extra": extra}
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for split, images in splits.items():
            pick = (rows or {}).get(split)
            labels = images.labels if pick is None else images.labels[pick]
            paths = images.paths or []
            if pick is not None and paths:
                paths = [paths[i] for i in pick.tolist()]
            shape = [len(labels), *images.images.shape[1:]]
            _write_split(entry / f"{split}.safetensors", images.images, images.labels, pick)
            meta["classes"] = images.classes
            meta["splits"][split] = {"shape": shape, "paths": [p.removeprefix(prefix) for p in paths]}
        write_json(entry / "meta.json", meta)  # last: its presence marks the entry complete
    except (OSError, FewLabelsError) as err:  # write_json turns a failed write into a FewLabelsError
        warnings.warn(f"Could not write the decode cache {entry} ({err}); the next load will decode again. Point "
                      "cache_dir (or $FEWLABELS_CACHE) at a writable folder to cache.", stacklevel=3)
        return False
    _remove_stale(entry)
    return True


def scratch(entry: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A writable uint8 tensor of `shape` memory-mapped from a file in the entry folder (imageset.scratch), for
    decoding a folder without holding it in RAM; None when the folder cannot be written (then decode into RAM)."""
    return imageset.scratch(shape, entry)


def _read(entry: Path, root: Path) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    meta = json.loads((entry / "meta.json").read_text())
    if meta["format"] != CACHE_FORMAT:
        raise ValueError(f"cache format {meta['format']}, expected {CACHE_FORMAT}")
    prefix = str(root) + os.sep
    splits = {}
    for split, info in meta["splits"].items():
        images, labels = _read_split(entry / f"{split}.safetensors")
        if images.dtype != torch.uint8 or list(images.shape) != info["shape"] or len(labels) != len(images):
            raise ValueError(f"{split}.safetensors does not match meta.json")
        raw = info.get("paths") or []  # [] for a set without paths (torchvision's), or for an empty split
        paths = [p if os.path.isabs(p) else prefix + p for p in raw] if raw or not len(images) else None
        splits[split] = ImageSet(images, labels, list(meta["classes"]), paths)
    return splits, meta["extra"]


_CHUNK_BYTES = 32 << 20


def _write_split(path: Path, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None) -> None:
    """A safetensors file ("labels" int64 (N,), "images" uint8 (N, C, H, W)) written in ~32 MB chunks of rows (all of
    `images` and their `labels`, or their `rows` in order) to a temporary name in the same folder, synced, then
    renamed over `path`."""
    if rows is not None:
        labels = labels[rows]
    n = len(labels)
    per = math.prod(images.shape[1:])
    header = {"labels": {"dtype": "I64", "shape": [n], "data_offsets": [0, 8 * n]},
              "images": {"dtype": "U8", "shape": [n, *images.shape[1:]], "data_offsets": [8 * n, 8 * n + n * per]}}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            f.write(labels.to(torch.int64).contiguous().numpy().tobytes())
            step = max(1, _CHUNK_BYTES // max(1, per))
            for i in range(0, n, step):
                part = images[i:i + step] if rows is None else images[rows[i:i + step]]
                f.write(np.ascontiguousarray(part.numpy()).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a split file: the labels read, the images memory-mapped copy-on-write (paged in as they
    are read; writing to them never changes the file)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 0 < size < 1 << 20:
            raise ValueError(f"{path.name} has no valid safetensors header")
        header = json.loads(f.read(size))
        lab, img = header["labels"], header["images"]
        if lab["dtype"] != "I64" or img["dtype"] != "U8":
            raise ValueError(f"{path.name}: unexpected dtypes {lab['dtype']}, {img['dtype']}")
        start = 8 + size
        f.seek(start + lab["data_offsets"][0])
        raw = bytearray(f.read(lab["data_offsets"][1] - lab["data_offsets"][0]))
        labels = torch.frombuffer(raw, dtype=torch.int64) if raw else torch.empty(0, dtype=torch.int64)
    shape = tuple(img["shape"])
    lo, hi = img["data_offsets"]
    if hi - lo != math.prod(shape) or os.path.getsize(path) < start + hi:
        raise ValueError(f"{path.name} is truncated")
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=torch.uint8), labels
    arr = np.memmap(path, dtype=np.uint8, mode="c", offset=start + lo, shape=shape)
    return torch.from_numpy(arr), labels


def _remove_stale(entry: Path) -> None:
    for other in entry.parent.iterdir():
        if other != entry and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "folder"

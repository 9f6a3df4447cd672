"""The user's unlabelled images (``--unlabelled PATH``): listed from folders and CSV/TSV lists, decoded like training.

A pool spec is a path or several (a list, or one string with commas): each a folder (every image under it,
subfolders and links followed, hidden files and folders left out: what a training folder sees), a CSV/TSV list of
files (:mod:`fewlabels.data.table`; the path column is the one named path/file/filename/filepath/image/image_path,
else the first; other columns are ignored, so a manifest whose label column is still empty is a pool list), or one
image file. A file reached twice (the same real path, e.g. through a link or two overlapping specs) is kept once, at
its first place; folders list in sorted order, tables in their own.

Decoding is a training folder's (:mod:`fewlabels.data.folder`: same conversions, same process pool, same
bad-image policy) at a shape the caller fixes, the model's, since a pool has no shape of its own to agree on: a
pool of photos decoded for a 1-channel 28x28 model comes out gray and 28x28. The result is cached like a folder: the
key holds the specs, the shape, the policy, the conversion version and every file's size and mtime, so a second
load of an unchanged pool reads one tensor file, and adding a file to the pool replaces its entry.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fewlabels.data import cache, folder
from fewlabels.data.imageset import ImageSet
from fewlabels.data.table import PATH_COLUMNS, read_table, resolve_path
from fewlabels.errors import FewLabelsError

POOL_SPLIT = "unlabelled"
TABLE_EXTENSIONS = (".csv", ".tsv", ".tab", ".txt")


def list_pool(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The image files of a pool spec (see the module docstring), absolute, each once, in the order given.

    Raises FewLabelsError for a path that does not exist, a table row naming a missing file (with the table's name
    and the line), or a spec with no images at all."""
    return _list(spec)[0]


def load_pool(spec: str | os.PathLike | Sequence[str | os.PathLike], shape: tuple[int, int, int], *,
              cache_dir: str | Path | None = None, bad_images: str = "stop", workers: int | None = None,
              progress: bool = True, classes: Sequence[str]) -> ImageSet:
    """Decode a pool to one uint8 (N, C, H, W) ImageSet at exactly `shape` (the model's (C, H, W)), labels -1,
    paths the listed files, `classes` the labelled set's class names; or load it from the decode cache.

    bad_images: "stop" raises naming the first unreadable file, "skip" leaves unreadable files out with a warning
    that counts them (on every load, the cached ones too). Nothing but the decoded array is held: bad rows are
    squeezed out in place, not copied."""
    if bad_images not in folder.BAD_IMAGE_POLICIES:
        raise FewLabelsError(f"bad_images must be one of {folder.BAD_IMAGE_POLICIES}, got {bad_images!r}")
    shape = _check_shape(shape)
    paths, sources = _list(spec)
    root = _root(paths, sources)
    settings = {"kind": "pool", "shape": list(shape), "bad_images": bad_images,
                "conversion": folder.CONVERSION_VERSION, "sources": sources}
    entry = cache.entry_for(cache_dir, root, settings, ((POOL_SPLIT, p, -1) for p in paths))
    cached = cache.load(entry, root)
    part = cached[0].get(POOL_SPLIT) if cached is not None else None
    if part is not None and part.image_shape == shape:
        kept = set(part.paths or [])
        left_out = {i: "left out when the pool was decoded" for i, p in enumerate(paths) if p not in kept}
        if left_out:  # bad_images="skip" dropped them: say so on every load, not only the first
            folder._warn_skipped(paths, left_out)
        # the class names are the caller's: the same pool serves every model, whatever its classes
        return ImageSet(part.images, part.labels, list(classes), part.paths)
    n_workers = folder._worker_count(len(paths), workers)
    with folder._executor(n_workers) as pool:
        images, headers = folder._decode_all(pool, paths, shape, n_workers, progress, POOL_SPLIT, entry)
    bad = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
    folder._report_bad(paths, bad, bad_images)
    if bad:
        folder._warn_skipped(paths, bad)
        images, paths = _squeeze_out(images, paths, bad)
    out = ImageSet(images, torch.full((len(paths),), -1, dtype=torch.long), list(classes), paths)
    if cache.save(entry, {POOL_SPLIT: out}, root, {"kind": "pool"}):
        cached = cache.load(entry, root)  # memory-mapped: the pool is paged in batch by batch, never held whole
        if cached is not None and POOL_SPLIT in cached[0]:
            part = cached[0][POOL_SPLIT]
            return ImageSet(part.images, part.labels, list(classes), part.paths)
    return out


# ---------------------------------------------------------------------------------------------------- listing


def _list(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """(image files, the specs as absolute paths)."""
    specs = _specs(spec)
    paths: list[str] = []
    seen: set[str] = set()
    sources = []
    for s in specs:
        found, source = _list_one(s)
        sources.append(source)
        for p in found:
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                paths.append(p)
    if not paths:
        raise FewLabelsError(f"no images in {', '.join(specs)}: pass a folder of images or a CSV/TSV list of them")
    return paths, sources


def _specs(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        # one path with a comma in its name is still one path; otherwise "a,b" is two
        parts = [s] if os.path.exists(os.path.expanduser(s)) else s.split(",")
    else:
        parts = [os.fspath(p) for p in spec]
    parts = [p.strip() for p in parts if p and p.strip()]
    if not parts:
        raise FewLabelsError("no unlabelled images given: pass a folder of images or a CSV/TSV list of their paths")
    return parts


def _list_one(spec: str) -> tuple[list[str], str]:
    p = os.path.abspath(os.path.expanduser(spec))
    if not os.path.exists(p):
        raise FewLabelsError(f"{spec} does not exist: pass a folder of unlabelled images or a CSV/TSV list of them")
    if os.path.isdir(p):
        images, others = folder._list_images(Path(p))
        if not images:
            raise FewLabelsError(f"{spec} has no images (extensions: "
                                 f"{', '.join(sorted(e[1:] for e in folder.IMAGE_EXTENSIONS))}): add them, or point "
                                 "at the folder that holds them")
        if others:
            warnings.warn(f"Ignored {len(others)} file(s) in {spec} without an image extension: "
                          f"{folder._first_few(others)}", stacklevel=4)
        return images, p
    ext = os.path.splitext(p)[1].lower()
    if ext in TABLE_EXTENSIONS:
        return _list_table(p), p
    if ext in folder.IMAGE_EXTENSIONS:
        return [p], p
    raise FewLabelsError(f"{spec} is neither a folder, an image nor a CSV/TSV list of images "
                         f"({', '.join(TABLE_EXTENSIONS)}): pass the folder of unlabelled images or a list of them")


def _list_table(path: str) -> list[str]:
    table = read_table(path)
    col = table.column(PATH_COLUMNS, 0)
    col = 0 if col is None else col
    first = table.rows[0][0] if table.rows else None
    out = []
    for line, cells in table.rows:
        raw = cells[col] if col < len(cells) else ""
        if not raw:
            raise FewLabelsError(f"{table.path} line {line}: no image path in column {col + 1}; give every row a path, "
                                 "or remove the row")
        file = os.path.abspath(resolve_path(table, raw))
        if not os.path.isfile(file):
            hint = (f" (if line {line} is a header, name its path column {PATH_COLUMNS[0]!r})"
                    if line == first and table.header is None else "")
            raise FewLabelsError(f"{table.path} line {line}: {raw} does not exist (looked for {file}); paths are "
                                 f"relative to the table's folder {table.folder}: fix the path or remove the row"
                                 f"{hint}")
        if os.path.splitext(file)[1].lower() not in folder.IMAGE_EXTENSIONS:
            raise FewLabelsError(f"{table.path} line {line}: {raw} is not an image file (extensions: "
                                 f"{', '.join(sorted(e[1:] for e in folder.IMAGE_EXTENSIONS))})")
        out.append(file)
    if not out:
        raise FewLabelsError(f"{table.path} lists no images: add one path per row")
    return out


# ---------------------------------------------------------------------------------------------------- decoding


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise FewLabelsError(f"shape must be (channels, height, width), got {shape!r}") from None
    if c not in (1, 3) or h < 1 or w < 1:
        raise FewLabelsError(f"shape must be (1 or 3 channels, height ≥ 1, width ≥ 1), got {tuple(shape)}")
    return c, h, w


def _root(paths: list[str], sources: list[str]) -> Path:
    """What the cache entry is named after and stores paths relative to: the folder of a single spec (the folder
    itself, or a table's or image's folder), else the common parent of every file."""
    if len(sources) == 1:
        return Path(sources[0] if os.path.isdir(sources[0]) else os.path.dirname(sources[0]))
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def _squeeze_out(images: torch.Tensor, paths: list[str], bad: dict[int, str]) -> tuple[torch.Tensor, list[str]]:
    """Drop the rows of bad files by moving the good rows up in place: no second copy of a possibly huge array."""
    keep = [i for i in range(len(paths)) if i not in bad]
    for dst, src in enumerate(keep):
        if dst != src:
            images[dst] = images[src]
    return images[:len(keep)], [paths[i] for i in keep]

"""Image-folder datasets: ``DIR/train/<class>/*`` (+ ``DIR/test``, ``DIR/val``) or one class tree ``DIR/<class>/*``.

Either layout may hold ``DIR/unlabelled/`` (or ``DIR/unlabeled/``): the user's images without a class, searched
recursively, decoded by the same rules into the split "unlabelled" with label -1 (the pool of self-training).

Decoding spreads chunks of files over all cores; each worker decodes, converts and resizes its chunk straight into
one uint8 (n, C, H, W) array, so the target shape must be known before decoding. It is guessed from the headers
of a few training files and checked against every header seen while decoding; in the rare case the guess was
wrong the set is decoded again (see ``_guess_shape``). Workers use PIL + numpy only, never torch, so forking a
parent whose torch thread pools are running is safe.

Conversions, one rule for all splits together so a model sees one input shape:

- channels: 1 when every image is grayscale (modes 1, L, LA, I, I;16, F), else RGB for all (gray is replicated);
- 16-bit images: ``>> 8``, which keeps the full range (clipping at 255 would turn almost every pixel white);
  32-bit integer images only when they exceed 255, float images on [0, 1] are scaled by 255;
- alpha (RGBA, LA, palette with transparency): composited on black, so transparent pixels become 0 whatever colour
  the file happens to store under them;
- CMYK, YCbCr, palette: PIL's conversion to RGB; EXIF orientation is applied (phone photos);
- size: ``image_size`` × ``image_size`` when given, else the most common size of the training images (a warning
  counts the others); an image of another size is scaled to cover the target, aspect kept, and centre-cropped.

Files with other extensions, hidden files and hidden folders (``.ipynb_checkpoints``) are ignored; an image file
that cannot be decoded is a "bad image": ``bad_images="stop"`` raises naming it, ``"skip"`` drops it with a warning.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from fewlabels.data import cache
from fewlabels.data.imageset import ImageSet
from fewlabels.errors import FewLabelsError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLIT_NAMES = ("train", "test", "val")
POOL_NAMES = ("unlabelled", "unlabeled")  # DIR/unlabelled/: images without a class, searched recursively
BAD_IMAGE_POLICIES = ("stop", "skip")
TEST_FRACTION = 0.2  # held out of a class tree (and of digits) as the test split
SPLIT_SEED = 0
PARALLEL_MIN_FILES = 2000  # below this, starting worker processes costs more than it saves
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
CONVERSION_VERSION = 2  # bump when decoding changes what pixels come out: it is part of the cache key
_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90°
_EXIF_ORIENTATION = 0x0112
_CHUNK_BYTES = 32 << 20  # a decoded chunk of about 32 MB keeps the transfer from a worker cheap


@dataclass
class FolderFiles:
    """What is on disk: the image files of each split (train first) and the class names."""

    root: Path
    layout: str  # "splits" (DIR/train, ...), "tree" (DIR/<class>/...) or "manifest" (a CSV/TSV file)
    classes: list[str]
    paths: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # files without an image extension
    manifest: str | None = None  # the CSV/TSV file the listing came from

    def all_paths(self) -> list[str]:
        return [p for split in self.paths for p in self.paths[split]]


@dataclass
class FolderData:
    """Decoded splits ("train", "test", "val" as present), train's normalisation statistics, provenance."""

    splits: dict[str, ImageSet]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any]


def load_image_folder(
    root: str | Path,
    *,
    cache_dir: str | Path | None = None,
    bad_images: str = "stop",
    image_size: int | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> FolderData:
    """Decode an image folder, or load it from the cache. A class tree gets a stratified 20% test split."""
    return load_files(list_folder(Path(root), bad_images), cache_dir=cache_dir, bad_images=bad_images,
                      image_size=image_size, progress=progress, workers=workers)


def load_files(files: FolderFiles, *, cache_dir: str | Path | None = None, bad_images: str = "stop",
               image_size: int | None = None, progress: bool = True, workers: int | None = None) -> FolderData:
    """Decode listed files (an image folder's, or a CSV manifest's), or load them from the cache. Without a test
    split of their own (a class tree, a manifest without test rows) a stratified 20% of train becomes the test."""
    if bad_images not in BAD_IMAGE_POLICIES:
        raise FewLabelsError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}.")
    if image_size is not None and image_size < 1:
        raise FewLabelsError(f"image_size must be a positive number of pixels, got {image_size}.")
    _warn_ignored(files)
    entry = cache_entry(files, cache_dir, image_size, bad_images)
    info: dict[str, Any] = {"source": "CSV manifest" if files.layout == "manifest" else "image folder",
                            "root": str(files.root), "layout": files.layout, "cache": str(entry)}
    if files.manifest:
        info["manifest"] = files.manifest
    held_out = files.layout == "tree" or (files.layout == "manifest" and not files.paths.get("test"))
    if held_out:
        info["test_split"] = split_info(str(files.root))
    cached = cache.load(entry, files.root)
    if cached is not None:
        splits, stats = cached
        kept = {p for part in splits.values() for p in part.paths or []}
        left_out = {i: "left out when the folder was decoded" for i, p in enumerate(files.all_paths())
                    if p not in kept}
        if left_out:  # bad_images="skip" dropped them; say so on every load, not only the first
            _warn_skipped(files.all_paths(), left_out)
        return FolderData(splits, tuple(stats["mean"]), tuple(stats["std"]), {**info, "cache_hit": True})
    splits = decode_folder(files, image_size=image_size, bad_images=bad_images, progress=progress, workers=workers,
                           scratch_in=entry)
    if len(splits["train"]) == 0:
        raise FewLabelsError(f"None of the training images in {files.root} could be read (bad_images='skip' left "
                             "them all out). Check the files, or point at the right folder.")
    counts = torch.bincount(splits["train"].labels, minlength=len(files.classes))
    empty = [files.classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        raise FewLabelsError(f"No training image of class {', '.join(empty)} could be read (bad_images='skip' left "
                             "them all out), so the model could never predict it. Fix those files, or remove the "
                             "class folder.")
    rows: dict[str, torch.Tensor] = {}
    if held_out:
        # No test folder: hold out a fixed stratified 20% so that a test number exists and never sees train. The
        # rows are picked as the cache is written (no copy of the decoded images), and read back from it.
        rows["train"], rows["test"] = stratified_split(splits["train"].labels)
        splits = {**splits, "test": splits["train"]}
    mean, std = channel_stats(splits["train"].images, rows.get("train"))  # ~1 s for 50k CIFAR images: cached too
    if cache.save(entry, splits, files.root, {"mean": mean, "std": std}, rows):
        cached = cache.load(entry, files.root)  # memory-mapped: the decoded images are not held in RAM
        if cached is not None:
            return FolderData(cached[0], mean, std, {**info, "cache_hit": False})
    splits = {k: v.subset(rows[k]) if k in rows else v for k, v in splits.items()}  # the cache could not be written
    return FolderData(splits, mean, std, {**info, "cache_hit": False})


def cache_entry(files: FolderFiles, cache_dir: str | Path | None, image_size: int | None, bad_images: str) -> Path:
    """The cache entry for these files and every setting that changes the decoded tensors."""
    settings = {"image_size": image_size, "bad_images": bad_images, "conversion": CONVERSION_VERSION,
                "test_split": [TEST_FRACTION, SPLIT_SEED]}
    if files.manifest:  # two manifests in one folder are two entries, and a renamed class is a new listing
        settings.update(manifest=files.manifest, classes=files.classes)
    return cache.entry_for(cache_dir, files.root, settings, _listing(files))


# ---------------------------------------------------------------------------------------------------- listing


def list_folder(root: Path, bad_images: str = "stop") -> FolderFiles:
    """Find the layout, the classes (sorted subfolder names of train) and every image file, in sorted order.
    bad_images: what to do with a folder link inside a class folder that leads out of it (its images would take that
    class): "stop" with a message, or "skip" it (listed among the ignored files)."""
    root = root.expanduser()
    if not root.exists():
        raise FewLabelsError(f"Image folder {root} does not exist. Check the path, or pass a dataset name instead.")
    if not root.is_dir():
        raise FewLabelsError(f"{root} is a file, not a folder. Pass a folder laid out as DIR/train/<class>/*.jpg "
                             "(optional DIR/test, DIR/val) or DIR/<class>/*.jpg.")
    root = root.resolve()
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if present and "train" not in present:
        raise FewLabelsError(f"{root} has {'/, '.join(present)}/ but no train/ folder. Add {root}/train/<class>/ "
                             "with the training images, or pass a folder that holds the class folders directly. "
                             f"If {present[0]} is one of your classes, rename its folder: train, test and val "
                             "name split folders.")
    split_dirs = {name: root / name for name in present} if present else {"train": root}
    pools = [root / name for name in POOL_NAMES if (root / name).is_dir()]
    if len(pools) > 1:
        raise FewLabelsError(f"{root} has both unlabelled/ and unlabeled/: keep one folder of unlabelled images")
    classes = _class_names(split_dirs["train"], skip=POOL_NAMES if not present else ())
    files = FolderFiles(root, "splits" if present else "tree", classes)
    for split, split_dir in split_dirs.items():
        _list_split(files, split, split_dir, bad_images)
        loose = sorted(e.name for e in os.scandir(split_dir) if e.is_file() and not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
        if loose:
            warnings.warn(f"Ignored {len(loose)} image(s) directly in {split_dir}, outside the class folders "
                          f"({_first_few(loose)}): an image's class is the name of the folder it is in; images "
                          f"without a class go in {root / 'unlabelled'}/.", stacklevel=3)
    if pools:  # the user's own unlabelled images: listed after the labelled splits, label -1
        images, others = _list_images(pools[0])
        if not images:
            raise FewLabelsError(f"{pools[0]} has no images: add the unlabelled images there, or remove the folder")
        files.paths["unlabelled"], files.labels["unlabelled"] = images, [-1] * len(images)
        files.ignored += others
    return files


def _class_names(split_dir: Path, skip: tuple[str, ...] = ()) -> list[str]:
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
                   and e.name not in skip)
    if not names:
        raise FewLabelsError(f"{split_dir} has no class subfolders. Put each class's images in a subfolder named "
                             f"after the class: {split_dir}/<class>/image.jpg.")
    return names


def _list_split(files: FolderFiles, split: str, split_dir: Path, bad_images: str = "stop") -> None:
    found = _class_names(split_dir, POOL_NAMES if split_dir == files.root else ())
    unknown = sorted(set(found) - set(files.classes))
    if unknown:
        raise FewLabelsError(f"{split_dir} has class folders that train/ does not have: {', '.join(unknown)}. Test "
                             "and validation classes must also be training classes: rename or remove these folders, "
                             "or add training images for them.")
    paths, labels = [], []
    for name in found:
        images, others = _list_images(split_dir / name, links_out=bad_images, data_root=files.root)
        if not images:
            raise FewLabelsError(f"Class folder {split_dir / name} has no images (extensions: "
                                 f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}). Add images or remove it.")
        paths += images
        labels += [files.classes.index(name)] * len(images)
        files.ignored += others
    files.paths[split], files.labels[split] = paths, labels


def _list_images(class_dir: Path, links_out: str = "follow", data_root: Path | None = None
                 ) -> tuple[list[str], list[str]]:
    """Image files under class_dir (subfolders included, sorted: os.walk order differs between file systems).

    Folder links are followed, each real folder once (a link back up the tree would loop). links_out: what to do
    with a folder link out of class_dir's own tree into the rest of the data (`data_root`: another class, a parent,
    e.g. `cat/all -> ..`, whose images would all be labelled cat): "follow" (an unlabelled pool: no class to get
    wrong), "stop" with a message naming it, or "skip" it (returned among the other files, for the caller to
    report). A link to a folder outside the data altogether is followed: its images take the class of the folder
    the link is in, as the user laid it out."""
    images, others = [], []
    top = os.path.realpath(class_dir)
    data = os.path.realpath(data_root) if data_root is not None else top
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            link = os.path.join(dirpath, d)
            real = os.path.realpath(link)
            if d.startswith(".") or real in seen:
                continue
            inside_class = real == top or real.startswith(top + os.sep)
            into_data = real == data or real.startswith(data + os.sep) or top.startswith(real + os.sep)
            if links_out != "follow" and not inside_class and into_data:
                if links_out == "stop":
                    raise FewLabelsError(f"{link} links to {real}, outside its class folder {class_dir}: every image "
                                         f"there would be labelled {Path(class_dir).name}. Remove the link (or copy "
                                         f"the images in), or pass --bad-images skip to leave such links out")
                others.append(f"{link} (a folder link out of its class folder, left out)")
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith(".") or name.lower() in _JUNK_FILES:
                continue
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else others).append(os.path.join(dirpath, name))
    return sorted(images), sorted(others)


def _listing(files: FolderFiles) -> Iterator[tuple[str, str, int]]:
    """(split, path, label) of every file: what the cache key hashes, with each file's size and mtime."""
    for split, paths in files.paths.items():
        yield from zip([split] * len(paths), paths, files.labels[split])


def _first_few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _warn_ignored(files: FolderFiles) -> None:
    if files.ignored:
        warnings.warn(f"Ignored {len(files.ignored)} file(s) in {files.root} without an image extension, or folder "
                      f"links out of their class folder: {_first_few(files.ignored)}", stacklevel=3)


# ---------------------------------------------------------------------------------------------------- decoding


def decode_folder(files: FolderFiles, *, image_size: int | None, bad_images: str, progress: bool,
                  workers: int | None, scratch_in: Path | None = None) -> dict[str, ImageSet]:
    """Decode every split of the folder to one common (C, H, W); drops (skip) or reports (stop) bad images.
    scratch_in: a folder (the cache entry) to decode into a memory-mapped file there rather than into RAM."""
    paths, n_train = files.all_paths(), len(files.paths["train"])
    workers = _worker_count(len(paths), workers)
    guess = _guess_shape(paths[:n_train], image_size)
    with _executor(workers) as pool:
        images, headers = _decode_all(pool, paths, guess, workers, progress, files.root.name, scratch_in)
        bad = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
        _report_bad(paths, bad, bad_images)
        shape = _target_shape(headers, n_train, image_size, files.root)
        if shape != guess:  # the sample missed the common size or a colour image: decode again, right this time
            images, headers = _decode_all(pool, paths, shape, workers, progress, files.root.name, scratch_in)
            bad = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
            _report_bad(paths, bad, bad_images)  # a file can fail at the new size only
    if bad:
        _warn_skipped(paths, bad)
        keep = torch.tensor([i for i in range(len(paths)) if i not in bad], dtype=torch.long)
        return _split_back(files, images[keep], keep)
    return _split_back(files, images, torch.arange(len(paths)))


def decode_files(paths: Sequence[str | Path], shape: tuple[int, int, int], *, workers: int | None = None,
                 progress: bool = True, skipped: dict[int, str] | None = None) -> torch.Tensor:
    """Decode image files into one uint8 (N, C, H, W) tensor by the same rules as a training folder (EXIF
    orientation, alpha on black, 16-bit range, scale to cover and centre-crop), on all cores for many files.
    Raises FewLabelsError naming the first file that cannot be read; given a `skipped` dict instead, leaves such
    files out of the tensor and records {index in paths: why} there (--bad-images skip)."""
    paths = [str(p) for p in paths]
    workers = _worker_count(len(paths), workers)
    with _executor(workers) as pool:
        images, headers = _decode_all(pool, paths, shape, workers, progress, "images")
    bad = {i: h for i, h in enumerate(headers) if isinstance(h, str)}
    if bad and skipped is None:
        first = min(bad)
        more = f" ({len(bad) - 1} more unreadable file(s))" if len(bad) > 1 else ""
        raise FewLabelsError(f"cannot read image {paths[first]}: {bad[first]}{more}. Fix or remove it, or pass "
                             f"--bad-images skip.")
    if bad:
        skipped.update(bad)
        images = images[[i for i in range(len(paths)) if i not in bad]]
    return images


def load_labelled_folder(folder: str | Path, classes: list[str], shape: tuple[int, int, int], *,
                         what: str = "folder", progress: bool = True) -> ImageSet:
    """A folder of class subfolders (DIR/<class>/...) as one labelled split, decoded at `shape` by the training
    folder's rules, labels indexing `classes` (a class folder that is not one of them is an error naming it)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FewLabelsError(f"{what} {root}: no such folder; give a folder of class subfolders (DIR/<class>/...)")
    names = _class_names(root)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise FewLabelsError(f"{what} {root} has class folders that are not training classes: {_first_few(unknown)}; "
                             f"the training classes are {_first_few(list(classes))}")
    paths, labels = [], []
    for name in names:
        found = _list_images(root / name, links_out="stop", data_root=root)[0]
        paths += found
        labels += [classes.index(name)] * len(found)
    if not paths:
        raise FewLabelsError(f"{what} {root} has no images in class subfolders (DIR/<class>/image.jpg)")
    images = decode_files(paths, shape, progress=progress)
    return ImageSet(images, torch.tensor(labels, dtype=torch.long), list(classes), paths)


def list_images(folder: str | Path) -> list[str]:
    """The image files under a folder as a training folder sees them: subfolders and links followed, hidden files
    and folders left out, sorted."""
    return _list_images(Path(folder))[0]


def _split_back(files: FolderFiles, images: torch.Tensor, index: torch.Tensor) -> dict[str, ImageSet]:
    """Cut the decoded rows (row r came from file number index[r], index sorted) back into their splits.

    Each split is a contiguous run of rows, so slicing gives views: no copy of a possibly huge tensor."""
    paths = files.all_paths()
    labels = torch.tensor([y for split in files.labels for y in files.labels[split]], dtype=torch.long)
    out, first_file = {}, 0
    for split, split_paths in files.paths.items():
        lo, hi = torch.searchsorted(index, torch.tensor([first_file, first_file + len(split_paths)])).tolist()
        out[split] = ImageSet(images[lo:hi], labels[index[lo:hi]], list(files.classes),
                              [paths[i] for i in index[lo:hi].tolist()])
        first_file += len(split_paths)
    return out


def _report_bad(paths: list[str], bad: dict[int, str], policy: str) -> None:
    """Raise for a bad file under "stop" (or when nothing is readable); under "skip" just count them."""
    if not bad:
        return
    first = min(bad)
    if policy == "stop":
        more = f" ({len(bad) - 1} more unreadable file(s) found)" if len(bad) > 1 else ""
        raise FewLabelsError(f"Cannot read image {paths[first]}: {bad[first]}{more}. Fix or delete it, or pass "
                             "bad_images='skip' (--bad-images skip) to leave unreadable files out.")
    if len(bad) == len(paths):
        raise FewLabelsError(f"None of the {len(paths)} image files could be read; the first is {paths[first]}: "
                             f"{bad[first]}.")


def _warn_skipped(paths: list[str], bad: dict[int, str]) -> None:
    shown = "; ".join(f"{paths[i]} ({bad[i]})" for i in sorted(bad)[:3]) + ("; ..." if len(bad) > 3 else "")
    warnings.warn(f"Skipped {len(bad)} unreadable image(s) (bad_images='skip'): {shown}", stacklevel=4)


def _guess_shape(train_paths: list[str], image_size: int | None, sample: int = 64) -> tuple[int, int, int]:
    """(C, H, W) from the headers of a few evenly spaced training files.

    Decoding needs the target shape up front (workers resize in parallel and return fixed-size arrays), and the
    exact one needs every header: reading them all first costs ~30% extra on small JPEGs. So decode to this guess,
    check it against the headers seen while decoding, and decode again in the rare case it was wrong (e.g. the one
    colour image in a grayscale set was not in the sample).
    """
    step = max(1, len(train_paths) // sample)
    headers = [h for h in _scan_chunk(train_paths[::step][:sample]) if not isinstance(h, str)]
    channels = 1 if headers and all(gray for _, _, gray in headers) else 3
    if image_size is not None:
        return channels, image_size, image_size
    (w, h), _ = Counter((w, h) for w, h, _ in headers).most_common(1)[0] if headers else ((1, 1), 0)
    return channels, h, w


def _target_shape(headers: list[tuple[int, int, bool] | str], n_train: int, image_size: int | None,
                  root: Path) -> tuple[int, int, int]:
    """(C, H, W) for the whole set from every readable image's (width, height, is_gray): see the module docstring."""
    good = [h for h in headers if not isinstance(h, str)]
    channels = 1 if all(gray for _, _, gray in good) else 3
    if image_size is not None:
        return channels, image_size, image_size
    train = [h for h in headers[:n_train] if not isinstance(h, str)] or good
    (w, h), _ = Counter((w, h) for w, h, _ in train).most_common(1)[0]
    odd = sum((w0, h0) != (w, h) for w0, h0, _ in good)
    if odd:
        warnings.warn(f"{odd} of {len(good)} images in {root} are not {w}x{h}, the most common size; they were "
                      f"resized to {w}x{h} (scaled to cover, centre-cropped). Pass image_size to choose the size.",
                      stacklevel=4)
    return channels, h, w


def _decode_all(pool: Executor | None, paths: list[str], shape: tuple[int, int, int], workers: int,
                progress: bool, name: str, scratch_in: Path | None = None
                ) -> tuple[torch.Tensor, list[tuple[int, int, bool] | str]]:
    """Decode paths into one (N, C, H, W) uint8 tensor, with each file's (width, height, is_gray) as stored, or
    why it could not be read (its row is then zeros). scratch_in: a folder for a memory-mapped tensor (cache.scratch)
    that the chunks are written into as they come, so memory stays at a few chunks whatever the folder's size."""
    images = cache.scratch(scratch_in, (len(paths), *shape)) if scratch_in is not None else None
    if images is None:
        from fewlabels.data.imageset import check_memory
        check_memory((len(paths), *shape), f"decoding {name}")
        images = torch.empty((len(paths), *shape), dtype=torch.uint8)
    out, headers, start = images.numpy(), [], 0
    chunk = _chunk_size(len(paths), workers, math.prod(shape))
    for arr, chunk_headers in _run_chunks(pool, partial(_decode_chunk, shape=shape), paths, chunk, progress,
                                          f"decoding {name}"):
        out[start:start + len(arr)] = arr
        headers += chunk_headers
        start += len(arr)
    return images, headers


# ---------------------------------------------------------------------------------------------------- workers


def _worker_count(n_files: int, workers: int | None) -> int:
    """Processes for decoding n_files: all cores by default, one for small sets (see PARALLEL_MIN_FILES)."""
    if n_files < PARALLEL_MIN_FILES:
        return 1
    return default_workers() if workers is None else max(1, workers)


def default_workers() -> int:
    """Cores this process may use (a container's CPU set can be smaller than os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@contextmanager
def _executor(workers: int) -> Iterator[Executor | None]:
    """A process pool for the decode (and a second pass if the shape guess was wrong), or None to run here."""
    if workers <= 1:
        yield None
        return
    # fork starts workers in milliseconds and without re-importing torch; they only run PIL + numpy.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        yield pool


def _chunk_size(n: int, workers: int, bytes_per_image: int) -> int:
    """About 8 chunks per worker for load balance and a moving progress bar, at most ~32 MB each."""
    return max(1, min(math.ceil(n / (8 * workers)), 1024, _CHUNK_BYTES // max(1, bytes_per_image)))


def _run_chunks(pool: Executor | None, fn: Callable[[list[str]], Any], paths: Sequence[str], size: int,
                progress: bool, desc: str) -> Iterator[Any]:
    """fn over consecutive chunks of paths, in the pool's processes or here; yields the results in order."""
    chunks = [list(paths[i:i + size]) for i in range(0, len(paths), size)]
    results = map(fn, chunks) if pool is None else pool.map(fn, chunks)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress else True, leave=False) as bar:
        for chunk, result in zip(chunks, results):
            yield result
            bar.update(len(chunk))


def _scan_chunk(paths: list[str]) -> list[tuple[int, int, bool] | str]:
    """(width, height, is_gray) of each image as displayed, or why the file cannot be read."""
    out: list[tuple[int, int, bool] | str] = []
    for path in paths:
        try:
            with Image.open(path) as img:
                w, h = img.size
                if _orientation(img) in _SWAPS_AXES:
                    w, h = h, w
                out.append((w, h, img.mode in GRAY_MODES))
        except Exception as err:  # noqa: BLE001 - whatever PIL raises, the file is not a usable image
            out.append(_describe(err))
    return out


def _decode_chunk(paths: list[str], shape: tuple[int, int, int]
                  ) -> tuple[np.ndarray, list[tuple[int, int, bool] | str]]:
    """Decode paths into a uint8 (n, C, H, W) array, plus each file's header or why it failed (row left zeros)."""
    out = np.zeros((len(paths), *shape), dtype=np.uint8)
    headers: list[tuple[int, int, bool] | str] = []
    for i, path in enumerate(paths):
        try:
            out[i], header = decode_image(path, shape)
            headers.append(header)
        except Exception as err:  # noqa: BLE001 - whatever PIL raises, the file is not a usable image
            headers.append(_describe(err))
    return out, headers


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block should not make a readable image unusable
        return 1


# ---------------------------------------------------------------------------------------------------- one image


def decode_image(path: str | Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, bool]]:
    """One image file → uint8 (C, H, W) by the module's conversion rules, and its (width, height, is_gray) as
    displayed, before conversion."""
    c, h, w = shape
    with Image.open(path) as img:
        orientation = _orientation(img)
        shown = img.size[::-1] if orientation in _SWAPS_AXES else img.size
        header = (shown[0], shown[1], img.mode in GRAY_MODES)
        scale = max(w / shown[0], h / shown[1])
        if img.format == "JPEG" and scale < 0.5:
            # JPEG can decode at 1/2, 1/4, 1/8 scale almost for free: 5-10x faster on photos, same final size.
            img.draft(img.mode, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        img = _to_8bit(img, gray=c == 1)
        img = _resize_cover(img, w, h)
        arr = np.asarray(img)
    return (arr[None] if c == 1 else arr.transpose(2, 0, 1)), header


def _to_8bit(img: Image.Image, gray: bool) -> Image.Image:
    """img as 8-bit 'L' (gray) or 'RGB'."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        if mode == "F":
            if arr.size and arr.max() <= 1.0:
                arr = arr * 255.0  # a float image on [0, 1]
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr >> 8  # 16-bit → 8-bit keeps the range; mode I from 16-bit files holds 0..65535 too
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))  # 2-D uint8 → mode L
    elif mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        img = _on_black(img.convert("LA" if mode in ("LA", "La") else "RGBA"))
    target = "L" if gray else "RGB"
    return img if img.mode == target else img.convert(target)


def _on_black(img: Image.Image) -> Image.Image:
    """Composite an LA / RGBA image on black: colour × alpha."""
    out = Image.new(img.mode[:-1], img.size, 0)
    out.paste(img.convert(img.mode[:-1]), mask=img.getchannel("A"))
    return out


def _resize_cover(img: Image.Image, w: int, h: int) -> Image.Image:
    """Scale to cover w × h with the aspect ratio kept, then crop the centre (one resample via `box`)."""
    if img.size == (w, h):
        return img
    w0, h0 = img.size
    scale = max(w / w0, h / h0)
    bw, bh = w / scale, h / scale  # the source region that maps onto the target
    # clamped: w / (w / w0) can come out a hair above w0 in floating point, which PIL rejects
    box = (max(0.0, (w0 - bw) / 2), max(0.0, (h0 - bh) / 2), min(float(w0), (w0 + bw) / 2),
           min(float(h0), (h0 + bh) / 2))
    return img.resize((w, h), Image.Resampling.BILINEAR, box=box)


# ---------------------------------------------------------------------------------------------------- split, stats


def stratified_split(labels: torch.Tensor | np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) indices with round(test_fraction × n) of each class in test (a class of one image
    stays in train). Depends only on the labels and the seed, so the same folder gives the same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = min(int(np.floor(len(idx) * test_fraction + 0.5)), len(idx) - 1)
        test.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return torch.from_numpy(train_idx).long(), torch.from_numpy(test_idx).long()


def split_info(source: str) -> dict[str, Any]:
    """How a test split was made, for Dataset.info (and so for the run folder)."""
    return {"from": source, "stratified": True, "fraction": TEST_FRACTION, "seed": SPLIT_SEED}


def channel_stats(images: torch.Tensor, rows: torch.Tensor | None = None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std on [0, 1] of uint8 (N, C, H, W) (or of its `rows`), exact, from 256-bin
    histograms (bincount on uint8 is ~3x faster than float sums of squares and needs no float copy of the images),
    8,192 images at a time."""
    hist = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    chunks = images.split(8192) if rows is None else (images[r] for r in rows.split(8192))
    for chunk in chunks:
        for c in range(images.shape[1]):
            hist[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255
    n = hist.sum(dim=1)
    mean = (hist * values).sum(dim=1) / n
    # at least one grey level: a channel that never changes (a synthetic image, a scan with a constant channel)
    # would otherwise be divided by 0 and train on NaN
    std = ((hist * values**2).sum(dim=1) / n - mean**2).clamp_min(0).sqrt().clamp_min(1 / 255)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())

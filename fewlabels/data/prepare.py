"""The data a command trains on: the data, budget and pool options, and `prepare_data`, which loads the images,
adds the unlabelled pool and named validation/test folders, and makes (or reuses) the label-budget split."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Options, group, opt
from ..errors import FewLabelsError
from .imageset import ImageSet, gather
from .sources import Dataset, load_dataset
from .split import Split, make_split


@group
class Source:
    """Where the images come from and how they are decoded."""

    data: str | None = opt("digits", "dataset: digits, cifar10, cifar100, mnist, fashion-mnist, svhn, stl10, an image "
                           "folder (DIR/train/<class>/..., optional DIR/test, DIR/val, DIR/unlabelled; or "
                           "DIR/<class>/...) or a CSV/TSV manifest (path,label[,split])")
    data_root: str | None = opt(None, "where torchvision datasets live (default ~/.cache/fewlabels/datasets)",
                                resume="change")
    cache_dir: str | None = opt(None, "decoded-image cache (default ~/.cache/fewlabels/cache)", resume="change")
    bad_images: str = opt("stop", "on an unreadable image: stop, or skip it (with a count)", choices=("stop", "skip"))
    image_size: int | None = opt(None, "resize images of an image folder to this size", ge=1, le=4096)
    mean: list[float] | None = opt(None, "per-channel normalisation mean on [0, 1] (default: the dataset's; use the "
                                   "pretrained model's for transfer, e.g. 0.485,0.456,0.406)")
    std: list[float] | None = opt(None, "per-channel normalisation std on [0, 1] (default: the dataset's)", gt=0)


@group
class Budget:
    """Which images are labelled, validation or unlabelled (the split)."""

    labels: int | None = opt(None, "label budget: labelled images in all (stratified); default all", ge=1)
    labels_per_class: int | None = opt(None, "label budget per class", ge=1)
    val: float | str = opt(0.1, "validation images: a fraction (<1) or a count held out of the labelled training "
                           "images, or a folder of class subfolders (DIR/<class>/...) to validate on", ge=0)
    test: str | None = opt(None, "a folder of class subfolders (DIR/<class>/...) to test on, instead of the data's own "
                           "test images")
    split: str | None = opt(None, "reuse the split of a run folder (or a split.json) instead of making one")
    split_seed: int = opt(0, "seed of the label-budget split", ge=0, le=2**31 - 1)
    allow_overlap: bool = opt(False, "let this run validate or test on images that the run it starts from "
                              "(--pretrained, --teacher) trained on; refused otherwise. Recorded in the results")


@group
class Pool:
    """The user's own unlabelled images."""

    unlabelled: list[str] | None = opt(None, "your unlabelled images: folders (searched recursively) and/or CSV/TSV "
                                       "lists of paths, comma-separated; added to the pool of a folder's own "
                                       "unlabelled/ and a manifest's rows without a label. With real unlabelled "
                                       "images every labelled image is used unless --labels/--labels-per-class say "
                                       "otherwise")


class DataConfig(Options):
    """The data options a library call takes (`prepare_data`)."""

    groups = (Source, Budget, Pool)


EMPTY_POOL = ("the unlabelled pool is empty: give your unlabelled images (--unlabelled FOLDER_OR_CSV, a folder's "
              "unlabelled/ next to train/, or manifest rows with an empty label), or simulate a label budget "
              "(--labels or --labels-per-class) that leaves training images unlabelled")


def prepare_data(dc: Options, run_dir: Path | None, log=print, source: Path | None = None,
                 source_name: str = "") -> tuple[Dataset, Split]:
    """Load the dataset and make (or reuse) the label-budget split; save it in the run folder.

    source: the split.json of the run this one starts from (`selftrain --teacher RUN`, `--pretrained RUN`). When it
    was made for this dataset it is reused unless --split or a label budget says otherwise, so that the images that
    run was trained on stay out of this run's validation images; when a budget makes a new split, the new validation
    images must not be among that run's labelled ones (else its accuracy would be measured on its training data)."""
    ds = load_dataset(dc.data, root=dc.data_root, cache_dir=dc.cache_dir, bad_images=dc.bad_images,
                      image_size=dc.image_size)
    if ds.train.num_classes < 2:
        only = ds.train.classes[0] if ds.train.classes else "?"
        raise FewLabelsError(f"{dc.data} has one class ({only}): a classifier needs at least two. Give each class "
                             f"its own subfolder (DIR/<class>/image.jpg); if {only}/ holds the class folders, pass "
                             f"that folder as --data")
    if dc.mean is not None or dc.std is not None:
        c = ds.train.image_shape[0]
        mean, std = tuple(dc.mean or ds.mean), tuple(dc.std or ds.std)
        if len(mean) != c or len(std) != c:
            raise FewLabelsError(f"--mean and --std need {c} values (one per channel), got {len(mean)} and {len(std)}")
        ds.mean, ds.std = mean, std
    ds = _with_named_splits(ds, dc, log)
    n_own = len(ds.train)
    ds = _with_pool(ds, getattr(dc, "unlabelled", None), dc, log)
    n = len(ds.train)
    existing = run_dir / "split.json" if run_dir is not None else None
    budget = dc.labels is not None or dc.labels_per_class is not None
    theirs = _fitting_split(source, n, n_own, dc.data)
    if dc.split:
        split = _load_split(dc.split, n, n_own)
        _check_budget_matches(split, ds.train.labels, dc)
    elif existing is not None and existing.is_file():
        split = Split.load(existing, pool_size=n)  # resuming: keep the split the run started with
    elif theirs is not None and not budget and ds.val is None:
        split = theirs
        log(f"the split of {source_name or source.parent} (its labelled images, validation images and pool)")
    else:
        if isinstance(dc.val, str):  # a folder, loaded as ds.val above
            pass
        elif dc.val >= 1 and not float(dc.val).is_integer():
            raise FewLabelsError(f"--val {dc.val:g}: give a fraction below 1 (e.g. 0.1) or a whole number of images")
        val = 0 if isinstance(dc.val, str) else dc.val if dc.val < 1 else int(dc.val)
        if ds.val is not None:
            val = 0  # the source has its own validation split
        split = make_split(ds.train.labels, ds.train.num_classes, labels_total=dc.labels,
                           labels_per_class=dc.labels_per_class, val=val, seed=dc.split_seed)
    if theirs is not None and split is not theirs:
        leaked = set(theirs.labelled.tolist()) & set(split.val.tolist())
        if leaked and not dc.allow_overlap:
            raise FewLabelsError(f"{len(leaked)} validation images of this run were training images of "
                                 f"{source_name or source.parent}, so its validation accuracy would be measured on "
                                 f"images it learned from: drop the label-budget options to reuse that run's split, "
                                 f"pass --split {source}, or --allow-overlap to accept it")
    ds = _check_overlap(ds, split, source, source_name, dc.allow_overlap, log)
    if run_dir is not None:
        labelled_paths = ([os.path.realpath(ds.train.paths[i]) for i in split.labelled.tolist()]
                          if ds.train.paths else None)
        split.save(run_dir / "split.json", labelled_paths)
    v = val_set(ds, split)
    n_real = int((ds.train.labels < 0).sum())
    hidden = len(split.unlabelled) - n_real
    pool = (f"{len(split.unlabelled)} unlabelled" + (f": {n_real} without a label, {hidden} with theirs hidden"
                                                      if n_real and hidden else ""))
    log(f"data {ds.name}: {len(split.labelled)} labelled, {len(v) if v is not None else 0} validation"
        f"{' (' + _val_source(ds) + ')' if ds.val is not None else ''}, {pool}, "
        f"{len(ds.test) if ds.test is not None else 0} test; {ds.train.num_classes} classes, images "
        f"{ds.train.image_shape}")
    return ds, split


def _check_overlap(ds: Dataset, split: Split, source: Path | None, source_name: str, allowed: bool, log) -> Dataset:
    """Refuse validation or test images that the source run trained on, by file (its split.json lists its labelled
    images' paths), whatever the folder layout or order; with --allow-overlap, say so and record the counts in
    ds.info["overlap_with_source"] (the commands write it into their results)."""
    import json

    try:
        theirs = set(json.loads(source.read_text()).get("labelled_paths") or []) if source is not None else set()
    except (OSError, ValueError):
        theirs = set()
    if not theirs:
        return ds
    v = val_set(ds, split)
    shared = {name: [p for p in (s.paths or []) if os.path.realpath(p) in theirs]
              for name, s in (("validation", v), ("test", ds.test)) if s is not None}
    shared = {k: ps for k, ps in shared.items() if ps}
    if not shared:
        return ds
    what = " and ".join(f"{len(ps)} {k}" for k, ps in shared.items())
    example = next(iter(shared.values()))[0]
    if not allowed:
        raise FewLabelsError(f"{what} images of this run were training images of {source_name or source.parent} "
                             f"(e.g. {example}), so its accuracy would be measured on images that model learned "
                             f"from: use that run's split (drop --labels/--labels-per-class/--val/--test, or pass "
                             f"--split {source}), or give --allow-overlap to accept it")
    log(f"note: {what} images were training images of {source_name or source.parent} (--allow-overlap): the "
        f"accuracy on them is not a held-out figure")
    info = {**ds.info, "overlap_with_source": {"source": str(source_name or source.parent),
                                               **{k: len(ps) for k, ps in shared.items()}}}
    return dataclasses.replace(ds, info=info)


def overlap_note(ds: Dataset) -> dict[str, Any]:
    """{"overlap_with_source": ...} for a run's results when --allow-overlap let shared images through, else {}."""
    return {"overlap_with_source": ds.info["overlap_with_source"]} if "overlap_with_source" in ds.info else {}


def _val_source(ds: Dataset) -> str:
    if "val_folder" in ds.info:
        return f"from {ds.info['val_folder']}"
    return "its own val split" if ds.info.get("layout") == "manifest" else "its own val/ folder"


def _with_named_splits(ds: Dataset, dc: Options, log) -> Dataset:
    """The dataset with --val DIR and --test DIR in place of its own validation and test images: class folders
    decoded at the training images' shape, their classes named as the training classes; an image that is also a
    training image is refused (its accuracy would be measured on what the model learned from)."""
    from .folder import load_labelled_folder

    named = {"val": dc.val if isinstance(dc.val, str) else None, "test": dc.test}
    if not any(named.values()):
        return ds
    changes, info = {}, dict(ds.info)
    own = {"val": ds.val, "test": ds.test}
    t, held = ds.train, ds.test
    if dc.test and "test_split" in ds.info and held is not None:  # the 20 % held out for want of a test split: back
        changes["train"] = t = ImageSet(gather([(t.images, None), (held.images, None)]),
                                        torch.cat([t.labels, held.labels]),
                                        list(t.classes), (t.paths or []) + (held.paths or []))
        own["test"] = None
        info.pop("test_split")
    train = {os.path.realpath(p) for p in t.paths or []}
    for split, folder in named.items():
        if folder is None:
            continue
        s = load_labelled_folder(folder, ds.train.classes, ds.train.image_shape, what=f"--{split}")
        shared = [p for p in s.paths or [] if os.path.realpath(p) in train]
        if shared:
            raise FewLabelsError(f"--{split} {folder}: {len(shared)} of its images are also training images of "
                                 f"{dc.data} (e.g. {shared[0]}); give a folder of other images")
        if own[split] is not None:
            log(f"note: --{split} {folder} replaces the {split} images of {dc.data}")
        changes[split], info[f"{split}_folder"] = s, str(folder)
    return dataclasses.replace(ds, **changes, info=info)


def _fitting_split(source: Path | None, n: int, n_own: int, data: str) -> Split | None:
    """The source run's split when it was made for this dataset (the same --data, the same number of images)."""
    if source is None:
        return None
    try:
        s = Split.load(source)
        theirs = (yaml.safe_load((source.parent / "config.yaml").read_text()) or {}).get("data")
    except (FewLabelsError, OSError, yaml.YAMLError, AttributeError):
        return None
    if theirs is None or _same_data(str(theirs), data, source.parent) is False:
        return None
    return _load_split(str(source), n, n_own) if s.pool_size in (n, n_own) else None


def _same_data(a: str, b: str, a_base: Path) -> bool:
    """Two --data values name the same dataset: the same source name, or the same folder/file (a relative path of
    the source run may have been given from another working folder: tried as it is and from the run's parent)."""
    if a == b:
        return True
    pb = Path(b).expanduser()
    if not pb.exists():
        return False
    return any(Path(c).expanduser().exists() and Path(c).expanduser().resolve() == pb.resolve()
               for c in (a, a_base.parent / a))


def _check_budget_matches(split: Split, labels: torch.Tensor, dc: Options) -> None:
    """--split decides the labelled images: a --labels or --labels-per-class beside it must say the same, or the run
    would record a budget it did not use."""
    lab = labels[split.labelled]
    counts = torch.bincount(lab[lab >= 0], minlength=1)
    have = f"{len(split.labelled)} labelled images ({int(counts.min())}-{int(counts.max())} per class)"
    if dc.labels is not None and dc.labels != len(split.labelled):
        raise FewLabelsError(f"--split {dc.split} has {have}, not --labels {dc.labels}: the split decides, so drop "
                             "--labels, or drop --split to draw a new split of that size")
    if dc.labels_per_class is not None and int(counts.max()) != dc.labels_per_class:
        raise FewLabelsError(f"--split {dc.split} has {have}, not --labels-per-class {dc.labels_per_class}: the "
                             "split decides, so drop --labels-per-class, or drop --split to draw a new split")


def _load_split(path: str, n: int, n_own: int) -> Split:
    """A split made for this dataset; a split made before the unlabelled pool was added (e.g. the teacher's run,
    trained on the labelled images alone) gets the pool appended to its unlabelled part."""
    s = Split.load(path, pool_size=n if n == n_own else None)
    if s.pool_size == n:
        return s
    if s.pool_size == n_own:
        extra = torch.arange(n_own, n)
        return Split(s.labelled, s.val, torch.cat([s.unlabelled, extra]), s.seed, n)
    return Split.load(path, pool_size=n)  # the error that names both sizes


def _with_pool(ds: Dataset, unlabelled: list[str] | None, dc: Options, log) -> Dataset:
    """The dataset with its unlabelled pool (DIR/unlabelled/, a manifest's rows without a label, --unlabelled)
    appended to the training images with label -1, so that a split's indices cover both; files that are already
    labelled training, validation or test images are left out of the pool (once is enough, and a test image must not
    be trained on, even unlabelled)."""
    pools = [ds.unlabelled] if ds.unlabelled is not None and len(ds.unlabelled) else []
    if unlabelled:
        from .pool import load_pool
        pools.append(load_pool(unlabelled, ds.train.image_shape, cache_dir=dc.cache_dir, bad_images=dc.bad_images,
                               classes=ds.train.classes))
    if not pools:
        return ds
    import os
    taken = {os.path.realpath(p) for part in (ds.train, ds.val, ds.test) if part is not None
             for p in (part.paths or [])}
    images, paths, dropped = [ds.train.images], list(ds.train.paths or [""] * len(ds.train)), 0
    for pool in pools:
        keep = [i for i, p in enumerate(pool.paths or []) if not p or os.path.realpath(p) not in taken]
        dropped += len(pool) - len(keep)
        if len(keep) < len(pool):
            pool = pool.subset(keep)
        taken |= {os.path.realpath(p) for p in pool.paths or [] if p}
        images.append(pool.images)
        paths += pool.paths or [""] * len(pool)
    if dropped:
        log(f"note: {dropped} unlabelled file(s) are also labelled, validation or test images of {ds.name}; they were "
            "left out of the unlabelled pool")
    n_pool = sum(len(t) for t in images[1:])
    train = ImageSet(gather([(x, None) for x in images]),  # a large pool: a memory-mapped scratch file, not RAM
                     torch.cat([ds.train.labels, torch.full((n_pool,), -1, dtype=torch.long)]),
                     list(ds.train.classes), paths)
    info = {**ds.info, "unlabelled_pool": {"images": n_pool, "from": list(unlabelled or []) + (
        ["unlabelled/ or rows without a label"] if ds.unlabelled is not None else [])}}
    return dataclasses.replace(ds, train=train, unlabelled=None, info=info)


def val_set(ds: Dataset, split: Split) -> ImageSet | None:
    if ds.val is not None:
        return ds.val
    return ds.train.subset(split.val) if len(split.val) else None


def eval_sets(ds: Dataset, split: Split) -> dict[str, ImageSet]:
    sets = {}
    v = val_set(ds, split)
    if v is not None:
        sets["val"] = v
    if ds.test is not None:
        sets["test"] = ds.test
    return sets

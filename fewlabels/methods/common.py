"""What every command shares: data + split options, model options, run folders."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Options, group, opt, to_yaml
from ..data import Dataset, ImageSet, Split, load_dataset, make_split
from ..engine.config import Augment, TrainConfig
from ..engine.loop import TrainSet
from ..errors import FewLabelsError
from ..targets import one_hot
from ..utils import atomic_write_text, environment_info, seed_everything, write_json


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
    image_size: int | None = opt(None, "resize images of an image folder to this size", ge=1)
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
    split_seed: int = opt(0, "seed of the label-budget split")
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


@group
class Model:
    """The network."""

    model: str = opt("cnn-s", "model name: cnn-tiny/s/m/l/xl (each also as -p2: airbench's 2x2 stem, faster), "
                              "mlp, resnet20/32/44/56, timm:<name>")
    drop_rate: float = opt(0.0, "dropout before the classifier", ge=0, lt=1)
    drop_path_rate: float = opt(0.0, "stochastic depth rate (deepest block)", ge=0, lt=1)
    pretrained: str | None = opt(None, "initial weights: a weights file, a fewlabels run folder, or 'true' for the "
                                 "model's own pretrained weights")


@group
class Teacher:
    """A trained model that teaches."""

    teacher: str | None = opt(None, "the teacher: a fewlabels run folder or checkpoint (train, transfer or distill) "
                              "trained on the same classes; its split is reused when it was made for this data. "
                              "selftrain takes it as round 0 instead of training a teacher")


@group
class Temperature:
    """Softening of a teacher's outputs."""

    temperature: float = opt(1.0, "softmax temperature T of the teacher's outputs: of soft pseudo-labels (with "
                             "--soft) or of distillation targets", gt=0)


@group
class Run:
    """What a command writes and prints."""

    out: str | None = opt(None, "where to write: the run folder of a training command (default "
                                "runs/<command>-<time>; an existing one is resumed, given the same options), else the "
                                "output file", resume="change")
    quiet: bool = opt(False, "print less", resume="change")
    overwrite: bool = opt(False, "replace --out when it exists", resume="change")


class DataConfig(Options):
    """The data options a library call takes (`prepare_data`)."""

    groups = (Source, Budget, Pool)


EMPTY_POOL = ("the unlabelled pool is empty: give your unlabelled images (--unlabelled FOLDER_OR_CSV, a folder's "
              "unlabelled/ next to train/, or manifest rows with an empty label), or simulate a label budget "
              "(--labels or --labels-per-class) that leaves training images unlabelled")
NO_FLIP_SOURCES = ("digits", "mnist", "svhn")  # a mirrored digit is not the same digit


def train_config(cfg: Options, ds: Dataset, **changes: Any) -> TrainConfig:
    """The TrainConfig part of a command's options, with hflip resolved for the dataset."""
    if cfg.group(Augment).hflip is None and "hflip" not in changes:
        # by the source name the user gave: an image folder named "mnist" is still a folder
        changes["hflip"] = getattr(cfg, "data", ds.name) not in NO_FLIP_SOURCES
    return TrainConfig.of(cfg, **changes)


def run_folder(out: str | None, command: str) -> Path:
    """The run folder (made if need be), locked for this process: one run per folder (see lock_run)."""
    p = Path(out) if out else Path("runs") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if p.exists() and not p.is_dir():
        raise FewLabelsError(f"--out {p} is a file; a run needs a folder: give a new --out")
    p.mkdir(parents=True, exist_ok=True)
    lock_run(p)
    return p


LOCK_FILE = ".fewlabels.lock"
_HELD: dict[str, int] = {}  # run folder → the open lock file this process holds


def lock_run(folder: Path) -> None:
    """Hold an exclusive lock on a run folder for the life of this process (fcntl.flock on RUN/.fewlabels.lock,
    which holds the PID). The OS drops it when the process ends, however it ends (kill -9 too), so the same command
    resumes; a second process on the same folder stops with one line naming the folder and the PID that holds it.
    A process may lock a folder again (a second command on it from the same Python session)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock; one run per folder is then up to the user
        return
    key = os.path.realpath(folder)
    if key in _HELD:
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FewLabelsError(f"{folder} is in use by another fewlabels process (PID {holder}): wait for it to end, "
                             f"or give this run another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd


# What a run writes at the top of its folder: a folder without config.yaml that holds one of these is not handed to
# a new run (it would be written over).
RUN_FILES = ("results.json", "metrics.jsonl", "metrics.json", "learning_curve.png", "checkpoints", "rounds.json",
             "pseudo_labels.safetensors", "pseudo_labels.csv")


# Files a run folder owns besides RUN_FILES: an output file (--out of evaluate, predict, suggest, augment preview)
# never replaces one of them, nor anything in a run's own subfolders.
RUN_OWNED = (*RUN_FILES, "config.yaml", "split.json", "environment.json", ".fewlabels.lock", "final.json",
             "rounds.md", "compare.md", "pseudo_labels_report.json", "equivariance.json", "fc_vs_cnn.json")
RUN_SUBFOLDERS = ("checkpoints", "scratch", "probe", "finetune")


def output_file(out: str | Path, overwrite: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """The file an --out option names, checked before any work: not a folder, of a kind the command writes, not a
    file a run folder owns (its config, results, checkpoints, rounds), and not an existing file unless --overwrite.
    The command then writes it atomically."""
    p = Path(out).expanduser()
    if p.is_dir():
        raise FewLabelsError(f"--out {p} is a folder: give a file name, e.g. {p / ('out' + (suffixes or ('',))[0])}")
    run = run_of(p.parent, "config.yaml")
    if run is not None and p.exists():
        rel = p.absolute().relative_to(run)
        if str(rel) in RUN_OWNED or rel.parts[0] in RUN_SUBFOLDERS or rel.parts[0].startswith("round"):
            raise FewLabelsError(f"--out {p} is a file of the run folder {run}, which needs it: write elsewhere")
    if suffixes and p.suffix.lower() not in suffixes:
        raise FewLabelsError(f"--out {p}: this command writes {' or '.join(suffixes)} files; give such a name")
    if p.exists() and not overwrite:
        raise FewLabelsError(f"{p} exists already: pass --overwrite to replace it, or give another --out")
    return p


def resume(saved: dict[str, Any] | None, saved_command: str, cfg: Options, command: str, where: str = "the run folder"
           ) -> Options:
    """The config a started run resumes with, from its saved config.yaml (`saved`, None when unreadable) and the new
    options: an option declared `resume="same"` must keep its value when the user gives it; one the user did not
    give takes the run's own value (a default that changed since the run started), as does a `resume="extend"` one
    (how far a run goes: a run started with --rounds 1 is not extended by the default). Options declared
    `resume="change"` (where the run lives, what it prints, where it runs) follow the new command."""
    if saved_command != command:
        raise FewLabelsError(f"{where} holds a `fewlabels {saved_command}` run; `fewlabels {command}` will not write "
                             f"into it: give it a new --out")
    if saved is None:
        raise FewLabelsError(f"{where} holds a run whose config.yaml cannot be read: give a new --out for a new run")
    new = cfg.asdict()
    differ = [k for k, d in cfg.options.items() if d.resume == "same" and k in saved and saved[k] != new[k]]
    conflicts = [k for k in differ if k in cfg.given]
    if conflicts:
        diff = ", ".join(f"{cfg.options[k].flag} {saved[k]!r} → {new[k]!r}" for k in conflicts)
        raise FewLabelsError(f"{where} holds a run with other options ({diff}); to resume it rerun with its own "
                             f"options (they are in its config.yaml), or give a new --out for a new run")
    keep = {k: saved[k] for k in differ}
    keep |= {k: saved[k] for k, d in cfg.options.items()
             if d.resume == "extend" and k not in cfg.given and k in saved and saved[k] != new[k]}
    return cfg.replace(**keep) if keep else cfg


def save_config(run_dir: Path, cfg: Options, command: str) -> Options:
    """Save the resolved config in the run folder, resuming the run there (see `resume`); returns the config the run
    goes on with. A folder in which a run stopped before doing any work (it holds only config.yaml, environment.json
    and split.json, e.g. after a typo in --data) is reused: its split is derived from the options and made again."""
    path = run_dir / "config.yaml"
    header = f"# fewlabels {command}\n" + (f"# from the built-in recipe {cfg.recipe}, then --config and flags\n"
                                           if cfg.recipe else "")
    if not path.is_file():
        theirs = [n for n in RUN_FILES if (run_dir / n).exists()]
        if theirs:
            raise FewLabelsError(f"{run_dir} is not a fewlabels run folder (no config.yaml) but holds "
                                 f"{', '.join(theirs)}, which a run would write over: give a new --out")
    else:
        started = any(e.name not in ("config.yaml", "environment.json", "split.json", LOCK_FILE)
                      for e in run_dir.iterdir())
        text = path.read_text()
        first, *rest = text.split("\n", 2)
        if not cfg.recipe and rest and rest[0].startswith("# from the built-in recipe "):  # resumed without --recipe
            header += rest[0] + "\n"
        old_command = first.removeprefix("# fewlabels ").strip() if first.startswith("# fewlabels ") else "?"
        try:
            old = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            old = None
        old = old if isinstance(old, dict) else None
        if started:
            cfg = resume(old, old_command, cfg, command, str(run_dir))
        elif old is None or old_command != command or any(
                old.get(k, v) != v for k, v in cfg.asdict().items() if cfg.options[k].resume == "same"):
            (run_dir / "split.json").unlink(missing_ok=True)  # nothing was done there: a split of these options
    atomic_write_text(path, header + to_yaml(cfg))
    write_json(run_dir / "environment.json", environment_info())
    return cfg


def run_of(path: str | Path | None, *files: str) -> Path | None:
    """The run folder a model comes from: the path itself, or for a checkpoint inside a run (RUN/checkpoints/best,
    RUN/roundN of selftrain and its checkpoints) the nearest folder up to 3 levels above, that holds all of `files`
    (e.g. config.yaml, split.json); None for a plain weights file, a model name or a folder without them."""
    if not path or not Path(path).expanduser().exists():
        return None
    p = Path(path).expanduser().absolute()
    p = p.parent if p.is_file() else p
    inside = (p / "model.json").is_file() or (p / "checkpoints").is_dir()
    return next((d for d in [p, *list(p.parents)[:3]][: 4 if inside else 1]
                 if all((d / f).is_file() for f in files)), None)


def source_split(source: str | None) -> Path | None:
    """The split.json of the run a model comes from (see run_of)."""
    run = run_of(source, "split.json")
    return run / "split.json" if run is not None else None


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
    from ..data.folder import load_labelled_folder

    named = {"val": dc.val if isinstance(dc.val, str) else None, "test": dc.test}
    if not any(named.values()):
        return ds
    changes, info = {}, dict(ds.info)
    own = {"val": ds.val, "test": ds.test}
    t, held = ds.train, ds.test
    if dc.test and "test_split" in ds.info and held is not None:  # the 20 % held out for want of a test split: back
        changes["train"] = t = ImageSet(torch.cat([t.images, held.images]), torch.cat([t.labels, held.labels]),
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
        from ..data.pool import load_pool
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
    train = ImageSet(torch.cat(images), torch.cat([ds.train.labels, torch.full((n_pool,), -1, dtype=torch.long)]),
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


def labelled_trainset(ds: Dataset, split: Split, smoothing: float) -> TrainSet:
    lab = ds.train.subset(split.labelled)
    return TrainSet(lab.images, one_hot(lab.labels, ds.train.num_classes, smoothing),
                    torch.ones(len(lab), dtype=torch.bool), norm=(ds.mean, ds.std))


def build_model(mc: Model, ds: Dataset, log=print, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (initialised from `seed`) and the metadata a checkpoint needs to rebuild it."""
    from ..models import create_model, load_pretrained
    from ..models.registry import TIMM_PREFIX, default_weights_file

    seed_everything(seed)
    c, h, w = ds.train.image_shape
    kwargs: dict[str, Any] = {"drop_rate": mc.drop_rate, "drop_path_rate": mc.drop_path_rate}
    if mc.model == "mlp":
        kwargs["image_size"] = h
    own = mc.pretrained is not None and mc.pretrained.lower() in ("true", "yes", "1")
    timm_own = own and mc.model.startswith(TIMM_PREFIX)  # timm fetches its own weights and fits its own head
    source = (str(default_weights_file(mc.model)) if own and not timm_own
              else mc.pretrained if mc.pretrained and not own else None)
    model = create_model(mc.model, num_classes=ds.train.num_classes, in_chans=c, pretrained=timm_own, **kwargs)
    if source:
        report = load_pretrained(model, source)
        log(str(report))
        _new_head_unless_same_classes(model, report, source, ds.train.classes, log)
    meta = {"model": mc.model, "model_kwargs": kwargs, "classes": ds.train.classes, "in_chans": c,
            "image_size": [h, w], "mean": list(ds.mean), "std": list(ds.std), "dataset": ds.name}
    return model, meta


def _new_head_unless_same_classes(model: torch.nn.Module, report: Any, source: str, classes: list[str], log) -> None:
    """A classifier loaded from weights is only kept when it is known to be for these classes, in this order: a
    fewlabels checkpoint says which classes it was trained for. A plain weights file does not, so its head is kept
    when its shape fits (as timm does) and the log says so."""
    from ..engine.checkpoint import read_meta

    heads = tuple(getattr(model, "head_prefixes", ()))
    if not heads or not any(k.startswith(heads) for k in report.loaded):
        return
    try:
        trained_for = list(read_meta(source)["classes"])
    except (FewLabelsError, KeyError):
        log(f"note: the classifier of {source} fits this model and was loaded too: it is only right if that file "
            f"was trained for these {len(classes)} classes in this order ({_names(classes)})")
        return
    if trained_for != list(classes):
        model.reset_classifier(len(classes))
        log(f"new classifier: {source} was trained for other classes ({_names(trained_for)})")


def options_given(cfg: Options, names: list[str]) -> list[str]:
    """Which of `names` the user set to something other than the default."""
    return cfg.set_by_user(names)


def flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


def check_classes(meta: dict, classes: list[str], what: str, images: ImageSet | None = None) -> None:
    """A trained model meets data: same classes, and (given the images) the same channels and image size."""
    if list(meta["classes"]) != list(classes):
        trained, given = list(meta["classes"]), list(classes)
        missing, extra = [c for c in trained if c not in given], [c for c in given if c not in trained]
        diff = "; ".join(part for part in (
            f"the data lacks {_names(missing)}" if missing else "",
            f"the model was not trained for {_names(extra)}" if extra else "",
            "the same classes come in another order" if not missing and not extra else "") if part)
        raise FewLabelsError(f"{what} was trained for {len(trained)} classes ({_names(trained)}) but the data has "
                             f"{len(given)} ({_names(given)}): {diff}. Pass the data it was trained on, or train a "
                             f"model for this class set (train starts from its weights with a new head: --pretrained)")
    if images is None:
        return
    c, h, w = images.image_shape
    if "in_chans" in meta and int(meta["in_chans"]) != c:
        raise FewLabelsError(f"{what} takes {meta['in_chans']}-channel images but the data has {c} channels: pass "
                             f"the data it was trained on")
    if "image_size" in meta and list(meta["image_size"]) != [h, w]:
        th, tw = meta["image_size"]
        fix = (f"for an image folder, --image-size {th}" if th == tw else
               f"--image-size makes square images only: resize the images to {tw}x{th} (width x height)")
        raise FewLabelsError(f"{what} was trained on {tw}x{th} images (width x height) but the data has {w}x{h}: "
                             f"pass the data it was trained on ({fix})")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def with_report(out: dict[str, Any], model: torch.nn.Module, evals: dict[str, ImageSet], norm: tuple,
                tc: TrainConfig) -> dict[str, Any]:
    """`out` with the per-class report of a run's final model on its test images, else its validation images, as
    `report` ({"on", **eval.classification_report}), and its macro_f1 and balanced_accuracy at the top; evaluated
    as fit() evaluated (the run's precision, TTA and memory format)."""
    from ..eval import final_report

    report = final_report(model, evals, norm, batch_size=tc.eval_batch_size, precision=tc.precision,
                          tta_flip=tc.tta_flip, tta_translate=tc.tta_translate, channels_last=tc.channels_last)
    if report is not None:
        out.update(macro_f1=report["macro_f1"], balanced_accuracy=report["balanced_accuracy"], report=report)
    return out


def scored(metrics: dict[str, Any]) -> str:
    """'test accuracy 0.9, validation accuracy 0.8' for the splits a run's final metrics have."""
    parts = [f"{name} accuracy {metrics[f'{key}_acc']:.4f}" for key, name in (("test", "test"), ("val", "validation"))
             if metrics.get(f"{key}_acc") is not None]
    return ", ".join(parts) or "no validation or test images to score the model on"

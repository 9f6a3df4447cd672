"""Run folders: one per run, locked while a process uses it; its config.yaml, how a run resumes from it, and the
output files a command may write next to it."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .config import Options, to_yaml
from .errors import FewLabelsError
from .utils import atomic_write_text, environment_info, write_json


def run_folder(out: str | None, command: str) -> Path:
    """The run folder (made if need be), locked for this process: one run per folder (see lock_run). Under torchrun
    the folder is rank 0's, and the one returned to another rank is its private copy (distributed.shadow)."""
    from . import distributed

    default = Path("runs") / f"{command}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    p = Path(out) if out else Path(distributed.broadcast_object(str(default)))  # one name on every rank
    if p.exists() and not p.is_dir():
        raise FewLabelsError(f"--out {p} is a file; a run needs a folder: give a new --out")
    if distributed.rank() == 0:
        p.mkdir(parents=True, exist_ok=True)
        lock_run(p)
    return distributed.shadow(p)


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
             "rounds.md", "compare.md", "pseudo_labels_report.json", "equivariance.json", "fc_vs_cnn.json",
             "report.html")


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
    if getattr(cfg, "tensorboard", False):  # a missing optional package is said before any work
        from .tensorboard_events import check_available
        check_available()
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
                      and not e.name.startswith(".rank") for e in run_dir.iterdir())  # .rank<k>: torchrun's copies
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

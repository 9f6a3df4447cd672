"""Self-training on a user's own photos, laid out as a user has them: a few labelled images per class, a folder of
truly unlabelled ones, a test folder — and a pretrained start from a model of *other* classes.

The ../shared CIFAR-10 (JPEG) is cut into two disjoint halves of its classes:

- source: airplane, automobile, bird, cat, deer — all 25,000 training images labelled; a fewlabels model is trained
  on them (`fewlabels train`). It never sees a target class, let alone a target label.
- target: dog, frog, horse, ship, truck — laid out as a user would have them: `train/<class>/` with 25 images per
  class, `unlabelled/` with the other 24,875 training images under neutral names (no class folders), `test/<class>/`
  with the 5,000 test images.

On the target, with the CLI only: supervised-only (`fewlabels train`), fine-tuning the source model on the labelled
images (`fewlabels transfer`), `fewlabels selftrain` from scratch, and `fewlabels selftrain` whose teacher and student
start from the source model (`--teacher-pretrained/--student-pretrained`). The pseudo-label precision is recovered
afterwards from where each unlabelled file links to (fewlabels never sees it).

    .venv/bin/python benchmarks/selftrain_user_pool.py [--per-class 25] [--seed 0] [--smoke] [-- FEWLABELS OPTIONS]
    .venv/bin/python benchmarks/selftrain_user_pool.py --defaults --only selftrain_scratch,selftrain_pretrained

Options after `--` go verbatim to all five commands (so only options that train, transfer and selftrain all take,
e.g. `-- --batch-size 128`); the results list each `fewlabels` command line as it ran.

`--defaults` runs selftrain as `fewlabels selftrain --data DIR` does, with the command's own rounds, models and
epochs (issue 26 item 10: the defaults for a user's folder are the ones shown to help here); it writes
results/selftrain_user_pool_defaults.{json,md}.

Needs ../shared (or FEWLABELS_SHARED). Writes results/selftrain_user_pool.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flag_value, results_name, run_fewlabels, run_main, split_passthrough, started, write_results

SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")


def layout(cifar: Path, root: Path, per_class: int, seed: int, limit: int | None) -> tuple[Path, Path]:
    """Symlinked folders: root/source (train+test of the source classes), root/target (train: per_class per class,
    unlabelled/: the rest under hashed names, test)."""
    src, tgt = root / "source", root / "target"
    if (root / ".complete").is_file():
        return src, tgt
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    for split in ("train", "test"):
        for c in SOURCE:
            files = sorted((cifar / split / c).iterdir())[:limit]
            (src / split / c).mkdir(parents=True)
            for f in files:
                (src / split / c / f.name).symlink_to(f)
    (tgt / "unlabelled").mkdir(parents=True)
    for c in TARGET:
        files = sorted((cifar / "train" / c).iterdir())[:limit]
        rng.shuffle(files)
        (tgt / "train" / c).mkdir(parents=True)
        for f in files[:per_class]:
            (tgt / "train" / c / f.name).symlink_to(f)
        for f in files[per_class:]:  # a neutral name: nothing in the pool's paths says which class it is
            name = hashlib.sha256(f"{c}/{f.name}".encode()).hexdigest()[:16] + f.suffix
            (tgt / "unlabelled" / name).symlink_to(f)
        (tgt / "test" / c).mkdir(parents=True)
        for f in sorted((cifar / "test" / c).iterdir())[:limit]:
            (tgt / "test" / c / f.name).symlink_to(f)
    (root / ".complete").touch()
    return src, tgt


def pl_precision(pl_csv: Path) -> float | None:
    """Share of pseudo-labels whose class is the folder the linked file really lives in."""
    if not pl_csv.is_file():
        return None
    right = n = 0
    with pl_csv.open() as f:
        for row in csv.DictReader(f):
            n += 1
            right += Path(os.path.realpath(row["path"])).parent.name == row["class"]
    return right / n if n else None


MODEL = "cnn-s"
EPOCHS = {"source": "15", "teacher": "40", "student": "12"}
SMOKE_EPOCHS = {"source": "1", "teacher": "2", "student": "1"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=25, help="labelled images per target class (the layout)")
    ap.add_argument("--seed", type=int, default=0, help="which labelled images (layout) and the runs' --seed")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fewlabels" / "user_pool")
    ap.add_argument("--smoke", action="store_true",
                    help="40 images per class, 5 labelled, 1-2 epochs: checks the pipeline only")
    ap.add_argument("--defaults", action="store_true",
                    help="selftrain with the command's own defaults (rounds, models, epochs): what a user who types "
                    "`fewlabels selftrain --data DIR` gets (issue 26 item 10)")
    ap.add_argument("--only", default="", help="comma-separated subset of the runs (source runs when a pretrained "
                    "run needs it), e.g. selftrain_scratch,selftrain_pretrained")
    ap.add_argument("--results-name", type=results_name, default=None)
    return ap


def _root(a: argparse.Namespace) -> Path:
    per_class = 5 if a.smoke else a.per_class
    return a.workdir / f"{'smoke' if a.smoke else 'full'}-{per_class}-{a.seed}"


def plan(a: argparse.Namespace, extra: list[str]) -> dict[str, list[str]]:
    """The five commands (without `fewlabels`), by result key, in the order they run."""
    root = _root(a)
    src, tgt, runs = root / "source", root / "target", root / "runs"
    ep = SMOKE_EPOCHS if a.smoke else EPOCHS
    common = ["--model", MODEL, "--seed", str(a.seed)]
    rounds = ["--rounds", "1", "--teacher-model", MODEL, "--student-models", MODEL, "--teacher-epochs", ep["teacher"],
              "--student-epochs", ep["student"], "--seed", str(a.seed)]
    if a.defaults and not a.smoke:  # the smoke keeps its 1-2 epochs
        rounds = ["--seed", str(a.seed)]
    steps = {
        "source": ["train", "--data", str(src), "--epochs", ep["source"], *common, *extra, "--out",
                   str(runs / "source")],
        "supervised_only": ["train", "--data", str(tgt), "--epochs", ep["teacher"], *common, *extra, "--out",
                            str(runs / "supervised")],
        "finetune_pretrained": ["transfer", "--data", str(tgt), "--pretrained", str(runs / "source"), "--epochs",
                                ep["teacher"], *common, *extra, "--out", str(runs / "finetune")],
        "selftrain_scratch": ["selftrain", "--data", str(tgt), *rounds, *extra, "--out", str(runs / "scratch")],
        "selftrain_pretrained": ["selftrain", "--data", str(tgt), *rounds, "--teacher-pretrained",
                                 str(runs / "source"), "--student-pretrained", str(runs / "source"), *extra, "--out",
                                 str(runs / "pretrained")],
    }
    only = set(filter(None, a.only.split(",")))
    if only - set(steps):
        sys.exit(f"--only: unknown runs {', '.join(sorted(only - set(steps)))}; choose from {', '.join(steps)}")
    if only & {"finetune_pretrained", "selftrain_pretrained"}:
        only.add("source")
    return {k: v for k, v in steps.items() if not only or k in only}


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [["fewlabels", *args] for args in plan(build_parser().parse_args(own), extra).values()]


def main() -> None:
    from _shared_data import unpacked

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    limit = 40 if a.smoke else None
    per_class = 5 if a.smoke else a.per_class
    cifar = unpacked("cifar10")
    root = _root(a)
    src, tgt = layout(cifar, root, per_class, a.seed, limit)
    runs = root / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    start = started()
    steps = plan(a, extra)
    results, commands, minutes, done = {}, {}, {}, []
    t_all = time.perf_counter()
    for key, args in steps.items():
        run = run_fewlabels(args, log=runs / f"{key}.log")
        commands[key], minutes[key] = run["command"], round(run["minutes"], 2)
        out = Path(flag_value(args, "--out"))
        res = json.loads((out / ("rounds.json" if args[0] == "selftrain" else "results.json")).read_text())
        if args[0] == "selftrain":
            final = json.loads((out / "final.json").read_text())
            n_rounds = max(r["round"] for r in res if isinstance(r.get("round"), int))  # --rounds or its default
            results[key] = {"test_acc": final["test_acc"], "round0_test_acc": res[0]["test_acc"],
                            "rounds": [{k: r.get(k) for k in ("round", "model", "pseudo_labels", "val_acc",
                                                              "test_acc", "minutes")} for r in res],
                            "pl_precision": [pl_precision(out / f"round{r}" / "pseudo_labels.csv")
                                             for r in range(1, n_rounds + 1)
                                             if (out / f"round{r}" / "pseudo_labels.csv").is_file()]}
        elif args[0] == "transfer":
            results[key] = {"test_acc": res["finetune"]["test_acc"]}
        else:
            results[key] = {"test_acc": res["test_acc"]}
        done.append({"key": key, "command": run["command"], "test_acc": results[key]["test_acc"],
                     "minutes": minutes[key]})
        print(f"  {key}: test accuracy {results[key]['test_acc']:.4f} in {run['minutes']:.1f} min", flush=True)
    acc = {k: results[k]["test_acc"] for k in results}

    def gain(a_key: str, b_key: str) -> float | None:
        return round(100 * (acc[a_key] - acc[b_key]), 2) if a_key in acc and b_key in acc else None

    data = {
        "supervised_only": acc.get("supervised_only"),
        "finetune_pretrained": acc.get("finetune_pretrained"),
        "selftrain_scratch": acc.get("selftrain_scratch"),
        "selftrain_pretrained": acc.get("selftrain_pretrained"),
        "source_test_acc": acc.get("source"),
        "pretrained_gain_points": gain("selftrain_pretrained", "selftrain_scratch"),
        "selftrain_gain_points": gain("selftrain_scratch", "supervised_only"),
        "gain_over_round0_points": {k: round(100 * (r["test_acc"] - r["round0_test_acc"]), 2)
                                    for k, r in results.items() if "round0_test_acc" in r},
        "selftrain_defaults": a.defaults,
        "source_classes": list(SOURCE), "target_classes": list(TARGET),
        "labelled_per_class": per_class, "unlabelled_images": len(list((tgt / "unlabelled").iterdir())),
        "minutes": round((time.perf_counter() - t_all) / 60, 2), "minutes_per_command": minutes,
        "commands": commands, "runs": done, "details": results, "smoke": a.smoke, **start,
    }
    rows = ["| run | test accuracy | minutes | command |", "|---|---|---|---|"]
    for k in steps:
        rows.append(f"| {k} | {acc[k]:.4f} | {minutes[k]} | `{commands[k]}` |")
    said = [f"the pretrained start gains {data['pretrained_gain_points']:+.2f} points over self-training from "
            "scratch" if data["pretrained_gain_points"] is not None else "",
            f"self-training from scratch gains {data['selftrain_gain_points']:+.2f} over supervised-only"
            if data["selftrain_gain_points"] is not None else "",
            *(f"{k} ends {g:+.2f} points from its own round 0" for k, g in data["gain_over_round0_points"].items())]
    said_text = "; ".join(x for x in said if x)
    md = "\n".join(rows) + (
        f"\n\nSource classes {', '.join(SOURCE)}; target classes {', '.join(TARGET)}; {per_class} labelled images "
        f"per target class, {data['unlabelled_images']} unlabelled"
        + (" (selftrain with its own defaults)" if a.defaults else "") + ". "
        + said_text[:1].upper() + said_text[1:] + ".\n")
    name = "selftrain_user_pool" + ("_defaults" if a.defaults else "") + ("_smoke" if a.smoke else "")
    write_results(a.results_name or name, data, md)
    print(md)


if __name__ == "__main__":
    run_main(main)

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

    .venv/bin/python benchmarks/selftrain_user_pool.py [--per-class 25] [--smoke]

Needs ../shared (or FEWLABELS_SHARED). Writes results/selftrain_user_pool.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_main, write_results
from _shared_data import unpacked

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


def fewlabels(args: list[str], log: Path) -> tuple[list[str], float]:
    """Run `fewlabels ARGS` as a user would (this interpreter's package), teeing its output to `log`."""
    cmd = [sys.executable, "-m", "fewlabels", *args]
    print("$ fewlabels " + shlex.join(args), flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"fewlabels {shlex.join(args)} failed (exit {proc.returncode}); see {log}")
    return ["fewlabels", *args], (time.perf_counter() - t0) / 60


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=25, help="labelled images per target class")
    ap.add_argument("--source-epochs", type=int, default=15)
    ap.add_argument("--teacher-epochs", type=int, default=40)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default="cnn-s")
    ap.add_argument("--seed", type=int, default=0, help="which labelled images (layout) and the runs' seed")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fewlabels" / "user_pool")
    ap.add_argument("--smoke", action="store_true", help="40 images per class, 1-2 epochs: checks the pipeline only")
    ap.add_argument("--results-name", default=None)
    a = ap.parse_args()
    limit = 40 if a.smoke else None
    if a.smoke:
        a.source_epochs, a.teacher_epochs, a.student_epochs, a.per_class = 1, 2, 1, 5
    cifar = unpacked("cifar10")
    root = a.workdir / f"{'smoke' if a.smoke else 'full'}-{a.per_class}-{a.seed}"
    src, tgt = layout(cifar, root, a.per_class, a.seed, limit)
    runs = root / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    common = ["--model", a.model, "--seed", str(a.seed)]
    rounds = ["--rounds", str(a.rounds), "--teacher-model", a.model, "--student-models", a.model,
              "--teacher-epochs", str(a.teacher_epochs), "--student-epochs", str(a.student_epochs), "--seed",
              str(a.seed)]
    plan = {
        "source": ["train", "--data", str(src), "--epochs", str(a.source_epochs), *common, "--out",
                   str(runs / "source")],
        "supervised_only": ["train", "--data", str(tgt), "--epochs", str(a.teacher_epochs), *common, "--out",
                            str(runs / "supervised")],
        "finetune_pretrained": ["transfer", "--data", str(tgt), "--pretrained", str(runs / "source"), "--epochs",
                                str(a.teacher_epochs), *common, "--out", str(runs / "finetune")],
        "selftrain_scratch": ["selftrain", "--data", str(tgt), *rounds, "--out", str(runs / "scratch")],
        "selftrain_pretrained": ["selftrain", "--data", str(tgt), *rounds, "--teacher-pretrained",
                                 str(runs / "source"), "--student-pretrained", str(runs / "source"), "--out",
                                 str(runs / "pretrained")],
    }
    results, commands, minutes = {}, {}, {}
    t_all = time.perf_counter()
    for key, args in plan.items():
        cmd, m = fewlabels(args, runs / f"{key}.log")
        commands[key], minutes[key] = " ".join(shlex.quote(c) for c in cmd), round(m, 2)
        out = Path(args[args.index("--out") + 1])
        res = json.loads((out / ("rounds.json" if args[0] == "selftrain" else "results.json")).read_text())
        if args[0] == "selftrain":
            final = json.loads((out / "final.json").read_text())
            results[key] = {"test_acc": final["test_acc"], "round0_test_acc": res[0]["test_acc"],
                            "rounds": [{k: r.get(k) for k in ("round", "model", "pseudo_labels", "val_acc",
                                                              "test_acc", "minutes")} for r in res],
                            "pl_precision": [pl_precision(out / f"round{r}" / "pseudo_labels.csv")
                                             for r in range(1, a.rounds + 1)]}
        elif args[0] == "transfer":
            results[key] = {"test_acc": res["finetune"]["test_acc"]}
        else:
            results[key] = {"test_acc": res["test_acc"]}
        print(f"  {key}: test accuracy {results[key]['test_acc']:.4f} in {m:.1f} min", flush=True)
    acc = {k: results[k]["test_acc"] for k in results}
    data = {
        "supervised_only": acc["supervised_only"],
        "finetune_pretrained": acc["finetune_pretrained"],
        "selftrain_scratch": acc["selftrain_scratch"],
        "selftrain_pretrained": acc["selftrain_pretrained"],
        "source_test_acc": acc["source"],
        "pretrained_gain_points": round(100 * (acc["selftrain_pretrained"] - acc["selftrain_scratch"]), 2),
        "selftrain_gain_points": round(100 * (acc["selftrain_scratch"] - acc["supervised_only"]), 2),
        "source_classes": list(SOURCE), "target_classes": list(TARGET),
        "labelled_per_class": a.per_class, "unlabelled_images": len(list((tgt / "unlabelled").iterdir())),
        "minutes": round((time.perf_counter() - t_all) / 60, 2), "minutes_per_command": minutes,
        "commands": commands, "details": results, "smoke": a.smoke,
    }
    rows = ["| run | test accuracy | minutes | command |", "|---|---|---|---|"]
    for k in plan:
        rows.append(f"| {k} | {acc[k]:.4f} | {minutes[k]} | `{commands[k]}` |")
    md = "\n".join(rows) + (
        f"\n\nSource classes {', '.join(SOURCE)}; target classes {', '.join(TARGET)}; {a.per_class} labelled images "
        f"per target class, {data['unlabelled_images']} unlabelled. The pretrained start gains "
        f"{data['pretrained_gain_points']:+.2f} points over self-training from scratch; self-training from scratch "
        f"gains {data['selftrain_gain_points']:+.2f} over supervised-only.\n")
    write_results(a.results_name or ("selftrain_user_pool_smoke" if a.smoke else "selftrain_user_pool"), data, md)
    print(md)


if __name__ == "__main__":
    run_main(main)

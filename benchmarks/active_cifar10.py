"""What to label next, measured: CIFAR-10 (JPEG, ../shared) from 1,000 random labels, three rounds of +500 labels
chosen by `fewlabels suggest` (margin, k-center, random), the same model and epochs for each, several seeds.

Each round is plain fewlabels commands, as a user runs them: `fewlabels train --data labelled.csv` (a manifest of the
labelled rows plus the test rows), `fewlabels suggest RUN --unlabelled pool.csv --exclude labelled.csv --budget 500
--strategy S`; the benchmark then plays the labeller, filling in each suggested image's true class (the folder it
lives in) and appending it to the manifest. Round 0 (the 1,000 random labels) is shared by the strategies of a seed.

    .venv/bin/python benchmarks/active_cifar10.py [--seeds 0,1,2] [--rounds 3] [--smoke] [-- TRAIN OPTIONS]

Each training is `fewlabels train --model cnn-s --epochs 15`; options after `--` go verbatim to every `fewlabels
train` command (e.g. `-- --epochs 30`).

Writes results/active_cifar10.{json,md}: `accuracy` = {strategy: [mean test accuracy after 0, 1, 2, 3 rounds]},
`seeds`, the per-seed figures, and "runs": every `fewlabels` command line in the order it ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_name, run_fewlabels, run_main, split_passthrough, started, write_results

STRATEGIES = ("margin", "kcenter", "random")
TRAIN = ["--model", "cnn-s", "--epochs", "15"]
SMOKE_TRAIN = ["--epochs", "1"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--start", type=int, default=1000, help="random labels of round 0")
    ap.add_argument("--step", type=int, default=500, help="labels added per round (suggest's --budget)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fewlabels" / "active")
    ap.add_argument("--smoke", action="store_true", help="a few hundred images, 1 epoch: checks the pipeline only")
    ap.add_argument("--results-name", type=results_name, default=None)
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier results JSON of this benchmark with the same settings: its seeds (figures and "
                    "commands) join this run's, e.g. --seeds 2 --merge benchmarks/results/active_cifar10.json")
    return ap


def train_args(a: argparse.Namespace, extra: list[str], manifest: Path, seed: int, run: Path) -> list[str]:
    return ["train", "--data", str(manifest), *TRAIN, *extra, *(SMOKE_TRAIN if a.smoke else []), "--seed", str(seed),
            "--out", str(run)]


def suggest_args(a: argparse.Namespace, run: Path, pool: Path, manifest: Path, out: Path, strategy: str, seed: int,
                 r: int) -> list[str]:
    return ["suggest", str(run), "--unlabelled", str(pool), "--exclude", str(manifest), "--budget", str(a.step),
            "--strategy", strategy, "--out", str(out),
            *(["--seed", str(seed * 100 + r)] if strategy == "random" else [])]


def _smoke_sizes(a: argparse.Namespace) -> None:
    if a.smoke:
        a.start, a.step, a.rounds, a.seeds = 50, 20, 1, a.seeds.split(",")[0]


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    """Every command of a run, in order (the files they name are written by the benchmark as it goes)."""
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    _smoke_sizes(a)
    work = a.workdir / ("smoke" if a.smoke else "full")
    pool = work / "pool.csv"
    cmds = []
    for seed in (int(s) for s in a.seeds.split(",")):
        cmds.append(train_args(a, extra, work / f"s{seed}-r0.csv", seed, work / f"s{seed}-r0"))
        for strategy in STRATEGIES:
            run = work / f"s{seed}-r0"
            for r in range(1, a.rounds + 1):
                cmds.append(suggest_args(a, run, pool, work / f"s{seed}-{strategy}-r{r - 1}.csv",
                                         work / f"s{seed}-{strategy}-r{r}-suggestions.csv", strategy, seed, r))
                run = work / f"s{seed}-{strategy}-r{r}"
                cmds.append(train_args(a, extra, work / f"s{seed}-{strategy}-r{r}.csv", seed, run))
    return [["fewlabels", *c] for c in cmds]


def write_manifest(path: Path, labelled: list[Path], test: list[Path]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([p, p.parent.name, "train"] for p in labelled)
        w.writerows([p, p.parent.name, "test"] for p in test)


def test_acc(run: Path) -> float:
    import json
    return json.loads((run / "results.json").read_text())["test_acc"]


def main() -> None:
    from _shared_data import unpacked

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    _smoke_sizes(a)
    seeds = [int(s) for s in a.seeds.split(",")]
    cifar = unpacked("cifar10")
    train_files = sorted(p for c in sorted((cifar / "train").iterdir()) for p in sorted(c.iterdir()))
    test_files = sorted(p for c in sorted((cifar / "test").iterdir()) for p in sorted(c.iterdir()))
    if a.smoke:
        train_files, test_files = train_files[::100], test_files[::50]
    work = a.workdir / ("smoke" if a.smoke else "full")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pool_csv = work / "pool.csv"  # every training image: suggest leaves out the labelled ones (--exclude)
    pool_csv.write_text("path\n" + "".join(f"{p}\n" for p in train_files))
    per_seed: dict[str, dict[str, list[float]]] = {s: {} for s in STRATEGIES}
    runs: list[dict] = []
    log = work / "log.txt"

    def fewlabels(args: list[str], **fig) -> None:
        runs.append({**run_fewlabels(args, log=log), **fig})

    start_info = started()
    t0 = time.perf_counter()
    for seed in seeds:
        start = random.Random(seed).sample(train_files, a.start)
        m0 = work / f"s{seed}-r0.csv"
        write_manifest(m0, start, test_files)
        r0 = work / f"s{seed}-r0"
        fewlabels(train_args(a, extra, m0, seed, r0))
        acc0 = runs[-1]["test_acc"] = test_acc(r0)
        for strategy in STRATEGIES:
            labelled, run, accs = list(start), r0, [acc0]
            for r in range(1, a.rounds + 1):
                manifest = work / f"s{seed}-{strategy}-r{r - 1}.csv"
                write_manifest(manifest, labelled, test_files)
                sug = work / f"s{seed}-{strategy}-r{r}-suggestions.csv"
                fewlabels(suggest_args(a, run, pool_csv, manifest, sug, strategy, seed, r))
                with sug.open() as f:
                    labelled += [Path(row["path"]) for row in csv.DictReader(f)]  # the labeller: its folder
                manifest = work / f"s{seed}-{strategy}-r{r}.csv"
                write_manifest(manifest, labelled, test_files)
                run = work / f"s{seed}-{strategy}-r{r}"
                fewlabels(train_args(a, extra, manifest, seed, run))
                accs.append(test_acc(run))
                runs[-1]["test_acc"] = accs[-1]
            per_seed[strategy][str(seed)] = accs
            print(f"  seed {seed} {strategy}: {' -> '.join(f'{x:.4f}' for x in accs)}", flush=True)
    import yaml

    opts = yaml.safe_load((work / f"s{seeds[0]}-r0" / "config.yaml").read_text())
    merged = None
    if a.merge is not None:  # an earlier run's seeds, kept as they were measured
        old = json.loads(a.merge.read_text())
        same = {"start_labels": a.start, "step": a.step, "rounds": a.rounds, "epochs": opts["epochs"],
                "model": opts["model"]}
        differ = [k for k, v in same.items() if old.get(k) != v]
        if differ or set(old["seeds"]) & set(seeds):
            sys.exit(f"--merge {a.merge}: settings differ ({', '.join(differ)}) or seeds repeat")
        for s in STRATEGIES:
            per_seed[s] = {**old["per_seed"][s], **per_seed[s]}
        merged = {k: old[k] for k in ("seeds", "date", "git_commit", "machine", "minutes", "command",
                                      "commands_first_seed") if k in old}
        seeds, runs = sorted(old["seeds"] + seeds), old.get("runs", []) + runs
    mean = {s: [round(sum(v[i] for v in per_seed[s].values()) / len(seeds), 4) for i in range(a.rounds + 1)]
            for s in STRATEGIES}
    data = {"accuracy": mean, "seeds": seeds, "per_seed": per_seed, "start_labels": a.start, "step": a.step,
            "rounds": a.rounds, "epochs": opts["epochs"], "model": opts["model"],
            "minutes": round((time.perf_counter() - t0) / 60, 2), "runs": runs, "smoke": a.smoke,
            "merged_from": merged, **start_info}
    labels = [a.start + i * a.step for i in range(a.rounds + 1)]
    md = ["| strategy | " + " | ".join(f"{n} labels" for n in labels) + " |", "|---|" + "---|" * len(labels)]
    md += [f"| {s} | " + " | ".join(f"{x:.4f}" for x in mean[s]) + " |" for s in STRATEGIES]
    text = "\n".join(md) + (f"\n\nMean test accuracy over seeds {seeds}; {opts['model']}, {opts['epochs']} epochs per "
                           "training.\n")
    write_results(a.results_name or ("active_cifar10_smoke" if a.smoke else "active_cifar10"), data, text)
    print(text)


if __name__ == "__main__":
    run_main(main)

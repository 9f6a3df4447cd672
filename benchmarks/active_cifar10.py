"""What to label next, measured: CIFAR-10 (JPEG, ../shared) from 1,000 random labels, three rounds of +500 labels
chosen by `fewlabels suggest` (margin, k-center, random), the same model and epochs for each, several seeds.

Each round is plain fewlabels commands, as a user runs them: `fewlabels train --data labelled.csv` (a manifest of the
labelled rows plus the test rows), `fewlabels suggest RUN --unlabelled pool.csv --exclude labelled.csv --budget 500
--strategy S`; the benchmark then plays the labeller, filling in each suggested image's true class (the folder it
lives in) and appending it to the manifest. Round 0 (the 1,000 random labels) is shared by the strategies of a seed.

    .venv/bin/python benchmarks/active_cifar10.py [--seeds 0,1,2] [--rounds 3] [--epochs 15] [--smoke]

Writes results/active_cifar10.{json,md}: `accuracy` = {strategy: [mean test accuracy after 0, 1, 2, 3 rounds]},
`seeds`, the per-seed figures and the commands.
"""

from __future__ import annotations

import argparse
import csv
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

STRATEGIES = ("margin", "kcenter", "random")


def fewlabels(args: list[str], log: Path, commands: list[str]) -> None:
    commands.append("fewlabels " + shlex.join(args))
    print("$ " + commands[-1], flush=True)
    with log.open("a") as f:
        proc = subprocess.run([sys.executable, "-m", "fewlabels", *args], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"{commands[-1]} failed (exit {proc.returncode}); see {log}")


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--step", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--model", default="cnn-s")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fewlabels" / "active")
    ap.add_argument("--smoke", action="store_true", help="a few hundred images, 1 epoch: checks the pipeline only")
    ap.add_argument("--results-name", default=None)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    cifar = unpacked("cifar10")
    train_files = sorted(p for c in sorted((cifar / "train").iterdir()) for p in sorted(c.iterdir()))
    test_files = sorted(p for c in sorted((cifar / "test").iterdir()) for p in sorted(c.iterdir()))
    if a.smoke:
        train_files, test_files = train_files[::100], test_files[::50]
        a.start, a.step, a.rounds, a.epochs, seeds = 50, 20, 1, 1, seeds[:1]
    work = a.workdir / ("smoke" if a.smoke else "full")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pool_csv = work / "pool.csv"  # every training image: suggest leaves out the labelled ones (--exclude)
    pool_csv.write_text("path\n" + "".join(f"{p}\n" for p in train_files))
    common = ["--model", a.model, "--epochs", str(a.epochs)]
    per_seed: dict[str, dict[str, list[float]]] = {s: {} for s in STRATEGIES}
    commands: list[str] = []
    t0 = time.perf_counter()
    for seed in seeds:
        start = random.Random(seed).sample(train_files, a.start)
        m0 = work / f"s{seed}-r0.csv"
        write_manifest(m0, start, test_files)
        r0 = work / f"s{seed}-r0"
        fewlabels(["train", "--data", str(m0), *common, "--seed", str(seed), "--out", str(r0)], work / "log.txt",
                  commands)
        acc0 = test_acc(r0)
        for strategy in STRATEGIES:
            labelled, run, accs = list(start), r0, [acc0]
            for r in range(1, a.rounds + 1):
                manifest = work / f"s{seed}-{strategy}-r{r - 1}.csv"
                write_manifest(manifest, labelled, test_files)
                sug = work / f"s{seed}-{strategy}-r{r}-suggestions.csv"
                fewlabels(["suggest", str(run), "--unlabelled", str(pool_csv), "--exclude", str(manifest),
                           "--budget", str(a.step), "--strategy", strategy, "--out", str(sug),
                           *(["--seed", str(seed * 100 + r)] if strategy == "random" else [])], work / "log.txt",
                          commands)
                with sug.open() as f:
                    labelled += [Path(row["path"]) for row in csv.DictReader(f)]  # the labeller: its folder
                manifest = work / f"s{seed}-{strategy}-r{r}.csv"
                write_manifest(manifest, labelled, test_files)
                run = work / f"s{seed}-{strategy}-r{r}"
                fewlabels(["train", "--data", str(manifest), *common, "--seed", str(seed), "--out", str(run)],
                          work / "log.txt", commands)
                accs.append(test_acc(run))
            per_seed[strategy][str(seed)] = accs
            print(f"  seed {seed} {strategy}: {' -> '.join(f'{x:.4f}' for x in accs)}", flush=True)
    mean = {s: [round(sum(v[i] for v in per_seed[s].values()) / len(seeds), 4) for i in range(a.rounds + 1)]
            for s in STRATEGIES}
    data = {"accuracy": mean, "seeds": seeds, "per_seed": per_seed, "start_labels": a.start, "step": a.step,
            "rounds": a.rounds, "epochs": a.epochs, "model": a.model, "minutes": round((time.perf_counter() - t0) / 60,
                                                                                      2),
            "commands_first_seed": commands[: 2 + 2 * a.rounds * len(STRATEGIES)], "smoke": a.smoke}
    labels = [a.start + i * a.step for i in range(a.rounds + 1)]
    md = ["| strategy | " + " | ".join(f"{n} labels" for n in labels) + " |", "|---|" + "---|" * len(labels)]
    md += [f"| {s} | " + " | ".join(f"{x:.4f}" for x in mean[s]) + " |" for s in STRATEGIES]
    text = "\n".join(md) + f"\n\nMean test accuracy over seeds {seeds}; {a.model}, {a.epochs} epochs per training.\n"
    write_results(a.results_name or ("active_cifar10_smoke" if a.smoke else "active_cifar10"), data, text)
    print(text)


if __name__ == "__main__":
    run_main(main)

"""Noisy Student self-training on CIFAR-10 (JPEG copy in ../shared): 4,000 labels (400 per class), the other 46,000
training images unlabelled, with the `selftrain` recipe `cifar-cpu`. Targets (issue 31, 2 CPU cores): the final model
≥ 0.85 and ≥ supervised-only + 8 points, the whole run ≤ 60 min; the recipe's result is its run sized to the hour,
`selftrain_cifar10.py -- --budget-minutes 60`.

Runs one command and tabulates its rounds:

    fewlabels selftrain --recipe cifar-cpu --data ~/.cache/fewlabels/unpacked/cifar10 --labels-per-class 400 \\
        [--budget-minutes 60] --out runs/bench-selftrain_cifar10_4000

    .venv/bin/python benchmarks/selftrain_cifar10.py [--smoke] [--results-name NAME] [-- FEWLABELS OPTIONS]

Options after `--` go to `fewlabels selftrain` as they are and override the recipe and the label budget, e.g.
`-- --labels-per-class 25 --min-steps-per-epoch 10` or `-- --recipe cifar-gpu`; the result is named
selftrain_cifar10_<labels> unless --results-name says otherwise (use another name for a variant, to keep the main
result).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    flag_value,
    has_flag,
    previous,
    results_name,
    run_fewlabels,
    run_options,
    split_passthrough,
    started,
    write_results,
)

RECIPE = "cifar-cpu"
LABELS_PER_CLASS = "400"  # the 4,000 labels
# checks the script, not the claim: a 1-epoch teacher on 200 labels is rarely 50 % sure of anything, so the whole pool
# is labelled (threshold 0); cnn-tiny keeps the minute short
SMOKE = ["--labels-per-class", "20", "--teacher-model", "cnn-tiny", "--student-models", "cnn-tiny",
         "--teacher-epochs", "1", "--student-epochs", "1", "--finetune-epochs", "1", "--threshold", "0"]
HEADLINE = ("labels", "supervised_only", "rounds", "total_minutes", "table")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed to `fewlabels selftrain` verbatim")
    ap.add_argument("--data", default=None,
                    help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked once into "
                         "~/.cache/fewlabels/unpacked/cifar10)")
    ap.add_argument("--results-name", type=results_name, default=None,
                    help="file name under benchmarks/results/ (default selftrain_cifar10_<labels>; use another "
                         "name to keep the main result when trying a variant)")
    ap.add_argument("--smoke", action="store_true", help=f"adds {' '.join(SMOKE)}: checks the script, not the claim")
    ap.add_argument("--note", default=None, help="a note kept with the result (e.g. what else ran on the machine)")
    return ap


def fewlabels_args(a: argparse.Namespace, extra: list[str]) -> list[str]:
    """What goes after `fewlabels selftrain ... --data DATA`: the label budget, the user's options, the smoke's."""
    tail = [*extra, *(SMOKE if a.smoke else [])]  # a smoke run stays short whatever else is asked
    budget = [] if has_flag(tail, "--labels-per-class") or has_flag(tail, "--labels") else \
        ["--labels-per-class", LABELS_PER_CLASS]
    return [*budget, *tail]


def result_name(a: argparse.Namespace, extra: list[str]) -> str:
    args = fewlabels_args(a, extra)
    labels = flag_value(args, "--labels")
    labels = int(labels) if labels is not None else int(flag_value(args, "--labels-per-class")) * 10
    return (a.results_name or f"selftrain_cifar10_{labels}") + ("_smoke" if a.smoke else "")


def command(a: argparse.Namespace, extra: list[str], data: str) -> list[str]:
    """The `fewlabels selftrain` command line this benchmark runs."""
    recipe = [] if has_flag(extra, "--recipe") else ["--recipe", RECIPE]
    return ["fewlabels", "selftrain", *recipe, "--data", data, *fewlabels_args(a, extra),
            "--out", f"runs/bench-{result_name(a, extra)}"]


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [command(build_parser().parse_args(own), extra, data)]


def main() -> None:
    import json

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    start = started()
    name = result_name(a, extra)
    cmd = command(a, extra, a.data)
    out = Path(flag_value(cmd, "--out"))
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an existing folder would be resumed
    run = run_fewlabels(cmd[1:])
    rounds = json.loads((out / "rounds.json").read_text())
    final = json.loads((out / "final.json").read_text())
    options = run_options(out)
    total = run["minutes"]
    sup, last = rounds[0]["test_acc"], rounds[-1]["test_acc"]
    labels = options.get("labels") or (options.get("labels_per_class") or 0) * 10
    data_out = {"command": run["command"], "labels": labels, "supervised_only": sup,
                "rounds": [r["test_acc"] for r in rounds], "final": final, "total_minutes": total,
                "table": rounds, "recipe": None if has_flag(extra, "--recipe") else RECIPE, "options": options,
                "smoke": a.smoke, **start,
                "note": "total_minutes is the wall time of the whole `fewlabels selftrain` command (start-up, data "
                        "loading, pool labelling and evaluation included); each round's minutes are its training"}
    if labels == 4000:  # issue 31's targets are stated for the 4,000-label run on the CPU (issue 6's 0.88: a GPU's)
        data_out["targets"] = {"gain_points": 8, "accuracy": 0.85, "minutes": 60}
        data_out["met"] = {"gain": (last - sup) * 100 >= 8, "accuracy": last >= 0.85, "minutes": total <= 60}
    if a.note:
        data_out["note_run"] = a.note
    old = None if a.smoke else previous(name, HEADLINE)
    if old is not None:
        data_out["previous"] = old
    table = ((out / "rounds.md").read_text()
             + f"\nsupervised only {sup:.4f} → last round {last:.4f} ({(last - sup) * 100:+.1f} points), "
               f"{total:.1f} minutes in all\n\n    {run['command']}\n")
    if old is not None and old.get("rounds"):
        o = old["rounds"]
        table += (f"\nPrevious measurement ({old.get('date', '?')}, {old.get('machine', {}).get('cpu', '?')}): "
                  f"{' → '.join(f'{x:.4f}' for x in o)} in {old.get('total_minutes', float('nan')):.1f} minutes "
                  f"(`{old.get('command', '?')}`)\n")
    if a.note:
        table += f"\n{a.note}\n"
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

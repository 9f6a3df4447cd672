"""CIFAR-10 (the JPEG copy in ../shared), all 50,000 labels, supervised, on this machine's CPU: the `train` recipe
`cifar-cpu`. Target (issue 2): ≥ 0.90 within 15 minutes of training.

Runs one command and reads the test accuracy after every epoch from its run folder, so the time to each accuracy
level can be read:

    fewlabels train --recipe cifar-cpu --data ~/.cache/fewlabels/unpacked/cifar10 --out runs/bench-cifar10-supervised

    .venv/bin/python benchmarks/cifar10_supervised.py [--smoke] [--results-name NAME] [-- FEWLABELS OPTIONS]

Options after `--` go to `fewlabels train` as they are (they override the recipe), e.g. `-- --epochs 19`; use
another --results-name for such a variant, to keep the main result.
"""

from __future__ import annotations

import argparse
import json
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
SMOKE = ["--labels", "2000", "--epochs", "1"]  # checks the script, not the claim
HEADLINE = ("test_accuracy", "train_minutes", "wall_minutes_including_load_and_eval", "minutes_to_0.90")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed to `fewlabels train` verbatim")
    ap.add_argument("--data", default=None,
                    help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked once into "
                         "~/.cache/fewlabels/unpacked/cifar10)")
    ap.add_argument("--results-name", type=results_name, default="cifar10_supervised",
                    help="file name under benchmarks/results/ (keep the main result when trying a variant)")
    ap.add_argument("--out", default="runs/bench-cifar10-supervised", help="the run folder (removed first)")
    ap.add_argument("--smoke", action="store_true", help=f"adds {' '.join(SMOKE)}: checks the script, not the claim")
    ap.add_argument("--note", default=None, help="a note kept with the result (e.g. what else ran on the machine)")
    return ap


def command(a: argparse.Namespace, extra: list[str], data: str) -> list[str]:
    """The `fewlabels train` command line this benchmark runs."""
    recipe = [] if has_flag(extra, "--recipe") else ["--recipe", RECIPE]
    return ["fewlabels", "train", *recipe, "--data", data, *extra, *(SMOKE if a.smoke else []),
            "--out", out_dir(a)]


def out_dir(a: argparse.Namespace) -> str:
    return a.out + ("-smoke" if a.smoke else "")


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [command(build_parser().parse_args(own), extra, data)]


def main() -> None:
    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    start = started()
    out = Path(out_dir(a))
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an existing folder would be resumed
    cmd = command(a, extra, a.data)
    run = run_fewlabels(cmd[1:])
    res = json.loads((out / "results.json").read_text())
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    cum, curve = 0.0, []
    for h in hist:
        cum += h["epoch_seconds"]
        curve.append({"epoch": h["epoch"], "train_minutes": round(cum / 60, 3), "test_accuracy": h.get("test_acc"),
                      "images_per_s": h["images_per_s"]})
    train_minutes = cum / 60
    acc = res["test_acc"]
    first90 = next((c for c in curve if c["test_accuracy"] is not None and c["test_accuracy"] >= 0.90), None)
    name = a.results_name + ("_smoke" if a.smoke else "")
    data_out = {"command": run["command"], "test_accuracy": acc, "train_minutes": train_minutes,
                "wall_minutes_including_load_and_eval": run["minutes"],
                "target_accuracy": 0.90, "target_minutes": 15, "met": acc >= 0.90 and train_minutes <= 15,
                "minutes_to_0.90": first90["train_minutes"] if first90 else None, "per_epoch": curve,
                "recipe": None if has_flag(extra, "--recipe") else RECIPE,
                "options": run_options(out), "smoke": a.smoke, **start,
                "note": "train_minutes sums the training time of each epoch (forward/backward/augment); the per-epoch "
                        "test evaluation (with flip, and translate when on, TTA), data loading and start-up are "
                        "excluded and counted in wall minutes (the whole `fewlabels train` command)"}
    if a.note:
        data_out["note_run"] = a.note
    old = None if a.smoke else previous(name, HEADLINE)
    if old is not None:
        data_out["previous"] = old
    rows = "".join(f"| {c['epoch']} | {c['train_minutes']:.1f} | {_acc(c['test_accuracy'])} | "
                   f"{c['images_per_s']:.0f} |\n" for c in curve)
    verdict = "met" if data_out["met"] else "NOT met"
    model = flag_value(cmd, "--model", data_out["options"].get("model"))
    table = (f"CIFAR-10 (JPEG copy), {res.get('labels', 'all')} labels, {model}, {len(curve)} epochs: test accuracy "
             f"**{acc:.4f}** after {train_minutes:.1f} training minutes, {run['minutes']:.1f} minutes for the whole "
             f"command (target ≥ 0.90 within 15 training minutes: {verdict})\n\n"
             f"    {run['command']}\n"
             f"\n| epoch | train minutes | test accuracy | images/s |\n|---|---|---|---|\n{rows}")
    if old is not None and "test_accuracy" in old:
        table += (f"\nPrevious measurement ({old.get('date', '?')}, {old.get('machine', {}).get('cpu', '?')}): test "
                  f"accuracy {old['test_accuracy']:.4f} after {old.get('train_minutes', float('nan')):.1f} training "
                  f"minutes (`{old.get('command', '?')}`)\n")
    if a.note:
        table += f"\n{a.note}\n"
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""CIFAR-10 (the JPEG copy in ../shared): how well calibrated a trained model's probabilities are before and after
temperature scaling (issue 29). ECE (15 bins) and NLL before → after, on the validation images the temperature is
fitted on and — the honest, held-out figure — on CIFAR-10's 10,000 test images.

The model is the supervised recipe `cifar-cpu` on all labels, with 5,000 of the training images held out as the
validation set, calibrated at the end of training (`--calibrate`); with --scarce also a label-scarce model: 4,000
labels in all, as a user with 4,000 labelled images has them, 360 per class to train on and 400 held out to validate
(--val is held out of the whole labelled folder before the budget is drawn, so `--labels-per-class 400 --val 0.1`
would validate on 5,000 more labelled images than the budget):

    fewlabels train --recipe cifar-cpu --data ~/.cache/fewlabels/unpacked/cifar10 --val 5000 --eval-every 25 \\
        --calibrate --out runs/bench-calibration-cifar10
    fewlabels train --recipe cifar-cpu --data ~/.cache/fewlabels/unpacked/cifar10 --labels-per-class 360 --val 400 \\
        --eval-every 25 --calibrate --out runs/bench-calibration-cifar10-scarce

    .venv/bin/python benchmarks/calibration_cifar10.py [--smoke] [--scarce] [--results-name NAME] [-- OPTIONS]

`--eval-every 25` evaluates only after the last of the recipe's 25 epochs: the per-epoch evaluation (15,000 images,
flip + translate TTA) would cost about a third more time and, with a validation set, would pick the best epoch on the
very images the temperature is then fitted on. Options after `--` go to both `fewlabels train` commands as they are.
The top-level ece_before/ece_after/nll_before/nll_after are the test images' (held out from the fit); `val` has the
fit set's figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
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
EVAL_EVERY = ["--eval-every", "25"]  # the recipe's 25 epochs: evaluate (and pick the model) at the end only
SMOKE = ["--labels", "2000", "--epochs", "1"]  # checks the script, not the claim
SMOKE_SCARCE = ["--epochs", "1"]
HEADLINE = ("ece_before", "ece_after", "nll_before", "nll_after", "temperature", "test_acc")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed to both `fewlabels train` commands verbatim")
    ap.add_argument("--data", default=None,
                    help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked once into "
                         "~/.cache/fewlabels/unpacked/cifar10)")
    ap.add_argument("--results-name", type=results_name, default="calibration_cifar10",
                    help="file name under benchmarks/results/ (keep the main result when trying a variant)")
    ap.add_argument("--out", default="runs/bench-calibration-cifar10",
                    help="the run folder (removed first); the scarce model's is OUT-scarce")
    ap.add_argument("--val", default="5000", help="validation images held out of training, to fit T on (default 5000)")
    ap.add_argument("--scarce", action="store_true",
                    help="also a label-scarce model: --labels-per-class 360 --val 400, 4,000 labels in all "
                         "(results under `scarce`)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"adds {' '.join(SMOKE)} (--val 200; the scarce model {' '.join(SMOKE_SCARCE)}): checks the "
                         f"script, not the claim")
    ap.add_argument("--note", default=None, help="a note kept with the result (e.g. what else ran on the machine)")
    return ap


def out_dir(a: argparse.Namespace, scarce: bool = False) -> str:
    return a.out + ("-scarce" if scarce else "") + ("-smoke" if a.smoke else "")


def command(a: argparse.Namespace, extra: list[str], data: str, scarce: bool = False) -> list[str]:
    """The `fewlabels train --calibrate` command line of the main (all labels) or the label-scarce model."""
    recipe = [] if has_flag(extra, "--recipe") else ["--recipe", RECIPE]
    if scarce:
        budget = ["--labels-per-class", "360", "--val", "400"]
        smoke = SMOKE_SCARCE
    else:
        budget = ["--val", "200" if a.smoke else a.val]
        smoke = SMOKE
    return ["fewlabels", "train", *recipe, "--data", data, *budget, *EVAL_EVERY, "--calibrate", *extra,
            *(smoke if a.smoke else []), "--out", out_dir(a, scarce)]


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    return [command(a, extra, data), *([command(a, extra, data, scarce=True)] if a.scarce else [])]


def measure(a: argparse.Namespace, extra: list[str], data: str, scarce: bool = False) -> dict[str, Any]:
    """Run one `fewlabels train --calibrate` and read the calibration from its results.json."""
    out = Path(out_dir(a, scarce))
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an existing folder would be resumed
    run = run_fewlabels(command(a, extra, data, scarce)[1:])
    res = json.loads((out / "results.json").read_text())
    cal = res["calibration"]
    test = cal.get("test")
    if test is None:
        from fewlabels.errors import FewLabelsError

        raise FewLabelsError(f"{out}/results.json has no test-set calibration: the data needs test images")
    opts = run_options(out)
    return {"command": run["command"], "ece_before": test["ece_before"], "ece_after": test["ece_after"],
            "nll_before": test["nll_before"], "nll_after": test["nll_after"], "temperature": cal["temperature"],
            "bins": cal.get("bins"), "test": test, "val": cal["val"], "test_acc": res.get("test_acc"),
            "val_acc": res.get("val_acc"), "labels": res.get("labels"), "model": opts.get("model"),
            "epochs": opts.get("epochs"), "minutes": run["minutes"], "options": opts}


def _row(label: str, r: dict[str, Any]) -> str:
    return "".join(f"| {label} | {where} ({r[where]['n']:,} images) | {r['temperature']:.3f} | "
                   f"{r[where]['ece_before']:.4f} → **{r[where]['ece_after']:.4f}** | "
                   f"{r[where]['nll_before']:.4f} → **{r[where]['nll_after']:.4f}** |\n"
                   for where in ("test", "val"))


def table(m: dict[str, Any], s: dict[str, Any] | None, note: str | None) -> str:
    def label(r: dict[str, Any]) -> str:
        acc = "–" if r.get("test_acc") is None else f"{r['test_acc']:.4f}"
        return f"{r['model']}, {r['labels']} labels, test acc {acc}"

    md = (f"Temperature scaling (fitted on the validation images; ECE with {m.get('bins') or 15} bins, NLL in nats). "
          f"Test: CIFAR-10's test images, held out from the fit (the honest figure); val: the images T was fitted "
          f"on. Test ECE **{m['ece_before']:.4f} → {m['ece_after']:.4f}**, NLL {m['nll_before']:.4f} → "
          f"{m['nll_after']:.4f}, T = {m['temperature']:.3f} ({m['minutes']:.1f} minutes for the command)\n\n"
          f"    {m['command']}\n"
          + (f"    {s['command']}\n" if s else "")
          + "\n| model | images | T | ECE before → after | NLL before → after |\n|---|---|---|---|---|\n"
          + _row(label(m), m) + (_row(label(s) + " (scarce)", s) if s else ""))
    if note:
        md += f"\n{note}\n"
    return md


def main() -> None:
    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    start = started()
    name = a.results_name + ("_smoke" if a.smoke else "")
    old = None if a.smoke else previous(name, HEADLINE)
    m = measure(a, extra, a.data)
    data_out: dict[str, Any] = {k: m[k] for k in ("ece_before", "ece_after", "nll_before", "nll_after",
                                                    "temperature", "val", "test", "test_acc", "val_acc", "bins")}
    data_out.update(commands=[m["command"]], runs=[{"command": m["command"], "minutes": m["minutes"]}],
                    model=m["model"], labels=m["labels"], epochs=m["epochs"], minutes=m["minutes"],
                    recipe=None if has_flag(extra, "--recipe") else RECIPE, options=m["options"], smoke=a.smoke,
                    **start,
                    note="ece_*/nll_* at the top are the test images' (CIFAR-10's 10,000 test images, held out from "
                         "the fit); `val` holds the figures on the validation images T was fitted on. Logits as the "
                         "run evaluates (the recipe's flip + translate TTA). minutes: the whole `fewlabels train` "
                         "command, on cores shared with other work")
    if a.note:
        data_out["note_run"] = a.note
    if old is not None:
        data_out["previous"] = old
    write_results(name, data_out, table(m, None, a.note))  # the main result, kept even if the scarce run stops
    s = None
    if a.scarce:
        s = measure(a, extra, a.data, scarce=True)
        data_out["scarce"] = {k: v for k, v in s.items() if k != "options"}
        data_out["commands"].append(s["command"])
        data_out["runs"].append({"command": s["command"], "minutes": s["minutes"]})
        write_results(name, data_out, table(m, s, a.note))
    print(table(m, s, a.note))


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

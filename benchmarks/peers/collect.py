"""Collect the side-by-side runs into benchmarks/results/peers_cifar10_4000.{json,md} (issue 31).

USB's rows come from usb_run.py's JSON lines (~/.cache/fewlabels/peers/usb_results.jsonl, the last line per
algorithm and budget); fewlabels' from the run folders `runs/peers-fewlabels-<B>m` that `fewlabels selftrain
--budget-minutes B` wrote (final.json: the final model's test accuracy, the budget plan and the minutes it took),
or, where that folder is gone (runs/ is not kept with the repository), the row the results file already holds.

    .venv/bin/python benchmarks/peers/collect.py [--budgets 15,30,60]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import machine_info, run_main, write_results  # noqa: E402

REPO = HERE.parent.parent
RESULTS = HERE.parent / "results" / "peers_cifar10_4000.json"
USB_LINES = Path.home() / ".cache" / "fewlabels" / "peers" / "usb_results.jsonl"
BN_LINES = USB_LINES.parent / "usb_bn_check.jsonl"
USB_ALGORITHMS = ("supervised", "pseudolabel", "fixmatch", "freematch")


def _home(command: str | None) -> str | None:
    """A command as recorded, with this user's home written as ~ (as it is typed)."""
    return command.replace(str(Path.home()) + "/", "~/") if command else None


def _fewlabels_row(budget: int) -> dict | None:
    run = REPO / "runs" / f"peers-fewlabels-{budget}m"
    final = run / "final.json"
    if not final.is_file():
        return None
    f = json.loads(final.read_text())
    rounds = json.loads((run / "rounds.json").read_text()) if (run / "rounds.json").is_file() else []
    b = f.get("budget", {})
    env = json.loads((run / "environment.json").read_text()) if (run / "environment.json").is_file() else {}
    epochs = [json.loads(line) for m in sorted(run.glob("*/metrics.jsonl")) for line in m.read_text().splitlines()]
    seconds = sum(e["epoch_seconds"] for e in epochs)  # training alone, every round: as USB's images/s
    return {"system": "fewlabels", "machine": env.get("cpu") or machine_info()["cpu"],
            "algorithm": "noisy-student (selftrain --recipe cifar-cpu)",
            "budget_minutes": budget,
            "test_acc": f.get("test_acc"), "minutes": b.get("minutes"), "epochs": b.get("epochs"),
            "train_images_per_s": round(sum(e["images_per_s"] * e["epoch_seconds"] for e in epochs) / seconds, 1)
            if seconds else None,
            "supervised_only": rounds[0].get("test_acc") if rounds else None,
            "command": _home(env.get("command")) or (
                "fewlabels selftrain --recipe cifar-cpu --data ~/.cache/fewlabels/unpacked/cifar10 --split "
                f"~/.cache/fewlabels/peers/cifar10_4000/split.json --budget-minutes {budget} "
                f"--out runs/peers-fewlabels-{budget}m"),  # a run made before environment.json had its command
            "note": "minutes include fewlabels' own evaluation every 5 epochs and the pool labelling"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="15,30,60")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    usb: dict[tuple[str, int], dict] = {}
    if USB_LINES.is_file():
        for line in USB_LINES.read_text().splitlines():
            r = json.loads(line)
            if int(r["budget_minutes"]) in budgets and r.get("test_images", 10_000) == 10_000:
                usb[(r["algorithm"], int(r["budget_minutes"]))] = r
    bn = {}  # usb_bn_check.py: the same saved USB models with BatchNorm statistics recomputed (an aid USB lacks)
    if BN_LINES.is_file():
        for line in BN_LINES.read_text().splitlines():
            r = json.loads(line)
            if r.get("test_images") == 10_000:
                bn[(r["algorithm"], int(r["budget_minutes"]))] = r["test_acc_bn_recomputed"]
    rows = [{**{k: r[k] for k in ("system", "algorithm", "test_acc", "minutes", "train_images_per_s", "iterations",
                                  "command") if k in r}, "budget_minutes": int(r["budget_minutes"]),
             "machine": r.get("machine", {}).get("cpu"),
             **({"test_acc_bn_recomputed": bn[key]} if (key := (r["algorithm"], int(r["budget_minutes"]))) in bn
                else {})} for r in usb.values()]
    rows += [r for b in budgets if (r := _fewlabels_row(b)) is not None]
    prev = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    ran = {r["budget_minutes"] for r in rows if r["system"] == "fewlabels"}
    # runs/ is not kept with the repository: a fewlabels row whose run folder is gone stays as this file recorded it
    rows += [r for r in prev.get("results", []) if r["system"] == "fewlabels" and r["budget_minutes"] in budgets
             and r["budget_minutes"] not in ran]
    rows.sort(key=lambda r: (r["budget_minutes"], r["system"], r["algorithm"]))
    # rows measured on another machine before (an earlier results file) are kept apart: never compared across CPUs
    cpus = {r["machine"] for r in rows}
    earlier = []
    was = (prev.get("machine") or {}).get("cpu")
    for r in prev.get("results", []) + prev.get("earlier_results", []):
        r = {**r, "machine": r.get("machine") or was, "date": r.get("date") or prev.get("date")}
        if r["machine"] not in cpus:
            earlier.append(r)
    measured = sorted({r["budget_minutes"] for r in rows})
    missing = [f"{s} at {b} min" for b in budgets for s in ["fewlabels"] + [f"usb {a}" for a in USB_ALGORITHMS]
               if not any(r["budget_minutes"] == b and f"{r['system']} {r['algorithm']}".startswith(s)
                          for r in rows)]
    margins, partial = {}, {}
    for b in measured:
        here = [r for r in rows if r["budget_minutes"] == b]
        if len({r["machine"] for r in here}) > 1:
            sys.exit(f"{b} min: rows from several machines ({', '.join(sorted({r['machine'] for r in here}))})")
        ours = [r["test_acc"] for r in here if r["system"] == "fewlabels"]
        peers = [r["test_acc"] for r in here if r["system"] == "usb"]
        if ours and peers:  # against every USB algorithm, or (partial) against those run so far
            m = round(100 * (max(ours) - max(peers)), 2)
            (partial if any(x.endswith(f" at {b} min") for x in missing) else margins)[b] = m
    data = {"budgets_minutes": budgets, "measured_budgets": measured, "results": rows,
            "fewlabels_margin_points": margins.get(60), "margin_points_by_budget": margins,
            "partial_margin_points_by_budget": partial,
            "not_yet_run": missing, "target_margin_points": 3.0,
            "split": "~/.cache/fewlabels/peers/cifar10_4000/split.json (benchmarks/peers/export_split.py)",
            "runs": [{"command": r["command"]} for r in rows], "earlier_results": earlier}
    lines = ["| budget (min) | system | algorithm | test acc | minutes | images/s | USB, BN statistics recomputed |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        fresh = r.get("test_acc_bn_recomputed")
        lines.append(f"| {r['budget_minutes']} | {r['system']} | {r['algorithm']} | {r['test_acc']:.4f} | "
                     f"{r['minutes']} | {r.get('train_images_per_s', '–')} | "
                     f"{'–' if fresh is None else f'{fresh:.4f}'} |")
    table = "\n".join(lines) + "\n\n" + (
        "fewlabels minus the best USB algorithm, in points: "
        + ", ".join(f"{b} min: {m:+.1f}" for b, m in margins.items()) + " (target ≥ +3).\n" if margins else "")
    if bn:
        table += ("Last column: the same USB model with its BatchNorm statistics recomputed on clean training images "
                  "(`usb_bn_check.py`; USB's WRN keeps them with momentum 0.001, sized for a million iterations). "
                  "An aid USB does not ship: margins use USB as it runs.\n")
    if partial:
        table += ("Against the USB algorithms run so far (not all four yet): "
                  + ", ".join(f"{b} min: {m:+.1f}" for b, m in partial.items()) + ".\n")
    if missing:
        table += "Not yet run: " + ", ".join(missing) + ".\n"
    table += f"All rows on one machine: {', '.join(sorted(cpus))}, 2 cores, nothing else running.\n"
    if earlier:
        table += ("\nEarlier, on another machine (not compared with the rows above): " + "; ".join(
            f"{r['system']} {r['algorithm']} {r['budget_minutes']} min {r['test_acc']:.4f} ({r['machine']}, "
            f"{str(r['date'])[:10]})" for r in earlier) + ".\n")
    write_results("peers_cifar10_4000", data, table)
    print(table)


if __name__ == "__main__":
    run_main(main)

"""Augmentation presets on CIFAR-10 (JPEG copy in ../shared) with 4,000 labels: same model, same budget, one run each.

    .venv/bin/python benchmarks/augment_cifar10_4000.py [--model cnn-s] [--epochs 40] [--presets weak,strong] [--smoke]

Writes benchmarks/results/augment_cifar10_4000.{json,md}; with --epochs other than 40 (e.g. 120, to see whether the
stronger presets catch up with a longer schedule) the name gets an `_e<epochs>` suffix, and a subset of presets adds
their names (so two subsets can run side by side, one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from _shared_data import unpacked

import fewlabels

VARIANTS = {"none": {"augment": "none"}, "weak": {"augment": "weak"}, "strong": {"augment": "strong"},
            "strong+cutmix": {"augment": "strong", "cutmix": 1.0}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn-s")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--labels", type=int, default=4000)
    ap.add_argument("--presets", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.epochs, a.labels = 1, 500
    data = unpacked("cifar10")
    unknown = [p for p in a.presets.split(",") if p not in VARIANTS]
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; choose from {', '.join(VARIANTS)}")
    rows = {}
    for name, extra in ((p, VARIANTS[p]) for p in a.presets.split(",")):
        out = Path(f"runs/bench-augment-{name}-e{a.epochs}{'-smoke' if a.smoke else ''}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = fewlabels.train(data=str(data), labels=a.labels, val=0, model=a.model, epochs=a.epochs, batch_size=128,
                              lr=0.1, weight_decay=5e-4, schedule="cosine", warmup_epochs=2, seed=0, split_seed=0,
                              eval_every=10,
                              out=str(out), quiet=True, **extra)
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows[name] = {"test_accuracy": res["test_acc"], "minutes": (time.perf_counter() - t0) / 60,
                      "final_train_loss": last["train_loss"], **extra}
        print(name, rows[name], flush=True)
    data_out = {"model": a.model, "labels": a.labels, "epochs": a.epochs, "seed": 0, "variants": rows,
                "smoke": a.smoke}
    table = (f"CIFAR-10 (JPEG copy), {a.labels} labels, {a.model}, {a.epochs} epochs, one seed\n\n"
             "| preset | test accuracy | final train loss | minutes |\n|---|---|---|---|\n"
             + "".join(f"| {k} | {v['test_accuracy']:.4f} | {v['final_train_loss']:.3f} | {v['minutes']:.1f} |\n"
                       for k, v in rows.items())
             + "\nstrong = weak + RandAugment(2, 9) + Cutout(16); CutMix with probability 1. Stronger augmentation "
               "is a regulariser: it pays off only once the schedule is long enough to fit the harder views (see the "
               "final train losses).\n")
    name = ("augment_cifar10_4000" + (f"_e{a.epochs}" if a.epochs != 40 else "")
            + ("" if list(rows) == list(VARIANTS) else "_" + "-".join(rows)) + ("_smoke" if a.smoke else ""))
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""Augmentation presets on CIFAR-10 (JPEG copy in ../shared) with 4,000 labels: same model, same budget, one run each.

    .venv/bin/python benchmarks/augment_cifar10_4000.py [--model cnn-s] [--epochs 60] [--smoke]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.epochs, a.labels = 1, 500
    data = unpacked("cifar10")
    rows = {}
    for name, extra in VARIANTS.items():
        out = Path(f"runs/bench-augment-{name}{'-smoke' if a.smoke else ''}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = fewlabels.train(data=str(data), labels=a.labels, val=0, model=a.model, epochs=a.epochs, batch_size=128,
                              lr=0.1, weight_decay=5e-4, schedule="cosine", warmup_epochs=2, seed=0, split_seed=0,
                              eval_every=10,
                              out=str(out), quiet=True, **extra)
        rows[name] = {"test_accuracy": res["test_acc"], "minutes": (time.perf_counter() - t0) / 60, **extra}
        print(name, rows[name], flush=True)
    data_out = {"model": a.model, "labels": a.labels, "epochs": a.epochs, "seed": 0, "variants": rows,
                "smoke": a.smoke}
    table = (f"CIFAR-10 (JPEG copy), {a.labels} labels, {a.model}, {a.epochs} epochs, one seed\n\n"
             "| preset | test accuracy | minutes |\n|---|---|---|\n"
             + "".join(f"| {k} | {v['test_accuracy']:.4f} | {v['minutes']:.1f} |\n" for k, v in rows.items()))
    write_results("augment_cifar10_4000" + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    main()

"""Noisy Student ablation on CIFAR-10 (JPEG copy in ../shared), 4,000 labels: one student round from one shared
teacher, changing one thing at a time — no noise, input noise only, input + model noise; hard vs soft pseudo-labels;
class balancing on vs off. Same student model, epochs and seed in every row.

    .venv/bin/python benchmarks/selftrain_ablation.py [--student cnn-s] [--student-epochs 6] [--smoke]
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

from fewlabels.methods.selftrain import selftrain

# name → (student_augment, drop_rate, drop_path_rate, soft, balance)
VARIANTS = {
    "no noise": ("none", 0.0, 0.0, False, True),
    "input noise (strong aug)": ("strong", 0.0, 0.0, False, True),
    "input + model noise": ("strong", 0.3, 0.1, False, True),
    "input + model noise, soft labels": ("strong", 0.3, 0.1, True, True),
    "input + model noise, no balancing": ("strong", 0.3, 0.1, False, False),
}


NOTE = ("\nRead with the budget in mind: each student sees the same short budget (6 epochs by default, about 1,300 "
        "steps of 256). The noise-free student fits the pseudo-labels and beats its teacher, while RandAugment, "
        "dropout and stochastic depth leave it under-fitted (see the train losses) and below its teacher. Noisy "
        "Student's noise pays off when the student trains long enough to fit noised data.\n")


def _last_train_loss(path: Path) -> float:
    return json.loads(path.read_text().strip().splitlines()[-1])["train_loss"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels-per-class", type=int, default=400)
    ap.add_argument("--teacher", default="cnn-s")
    ap.add_argument("--student", default="cnn-s")
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=6)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--only", default="", help="comma-separated variant numbers (0-based) to run")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.labels_per_class, a.teacher_epochs, a.student_epochs, a.threshold = 20, 1, 1, 0.0
    data = unpacked("cifar10")
    name = "selftrain_ablation" + ("_smoke" if a.smoke else "")
    root = Path("runs") / f"bench-{name}"
    common = dict(data=str(data), labels_per_class=a.labels_per_class, val=0, teacher_model=a.teacher,
                  teacher_epochs=a.teacher_epochs, student_epochs=a.student_epochs, batch_size=256, lr=0.1,
                  weight_decay=5e-4, warmup_epochs=1, teacher_augment="weak", threshold=a.threshold,
                  unlabelled_ratio=3.0, min_steps_per_epoch=0, seed=0, split_seed=0, eval_every=100, quiet=True)
    t0 = time.perf_counter()
    teacher_dir = root / "teacher"
    res = selftrain(rounds=0, out=str(teacher_dir), **common)  # round 0 only; reused if already there
    teacher_acc = res["rounds"][0]["test_acc"]
    print(f"teacher {a.teacher}: test {teacher_acc:.4f}", flush=True)
    rows = []
    chosen = [int(i) for i in a.only.split(",")] if a.only else range(len(VARIANTS))
    for i, (label, (aug, drop, dpr, soft, balance)) in enumerate(VARIANTS.items()):
        if i not in chosen:
            continue
        out = root / f"v{i}"
        if not (out / "round1" / "results.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copytree(teacher_dir / "round0", out / "round0")
            shutil.copy(teacher_dir / "split.json", out / "split.json")
        r = selftrain(rounds=1, out=str(out), student_models=[a.student], student_augment=aug,
                      student_drop_rate=drop, student_drop_path_rate=dpr, soft=soft, balance=balance, **common)
        s = r["rounds"][1]
        row = {"variant": label, "student_augment": aug, "drop_rate": drop, "drop_path_rate": dpr, "soft": soft,
               "balance": balance, "pseudo_labels": s["pseudo_labels"], "pl_precision": s["pl_precision"],
               "test_acc": s["test_acc"], "gain_points": (s["test_acc"] - teacher_acc) * 100,
               "minutes": s["minutes"],
               "final_train_loss": _last_train_loss(out / "round1" / "metrics.jsonl")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    data_out = {"labels": a.labels_per_class * 10, "teacher_model": a.teacher, "student_model": a.student,
                "teacher_test_acc": teacher_acc, "student_epochs": a.student_epochs, "threshold": a.threshold,
                "rows": rows, "teacher_minutes": res["rounds"][0]["minutes"],
                # training time of the teacher and every student (also when rows were read back from finished runs)
                "total_minutes": res["rounds"][0]["minutes"] + sum(r["minutes"] for r in rows),
                "wall_minutes_this_invocation": (time.perf_counter() - t0) / 60, "smoke": a.smoke}
    table = (f"Teacher {a.teacher} on {a.labels_per_class * 10} labels: test {teacher_acc:.4f}. One {a.student} "
             f"student round, {a.student_epochs} epochs, threshold {a.threshold}.\n\n"
             "| variant | pseudo-labels | PL precision | student test | vs teacher | minutes |\n"
             "|---|---|---|---|---|---|\n"
             + "".join(f"| {r['variant']} | {r['pseudo_labels']} | {r['pl_precision']:.4f} | {r['test_acc']:.4f} | "
                       f"{r['gain_points']:+.1f} | {r['minutes']:.1f} |\n" for r in rows)
             + "\nStudent train loss at the end of the round (fit of the noised pseudo-labels): "
             + ", ".join(f"{r['variant']} {r['final_train_loss']:.3f}" for r in rows) + "\n" + NOTE)
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

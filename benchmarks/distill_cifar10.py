"""Knowledge distillation on CIFAR-10 (JPEG copy in ../shared).

Teacher: the ../shared ResNet-56 (trained on the original CIFAR-10) fine-tuned on the JPEG training set (all 50,000
labels). Students: ResNet-20 and the compact cnn-tiny, trained from scratch on a label budget (default 500 per class),
alone (cross-entropy) vs with KD (α·T²·KL + (1 − α)·CE, α = 0.9, T = 4) at equal epochs, over 3 seeds. The teacher
runs live on every augmented batch (no cached logits). Also writes the compression report (parameters, FLOPs, CPU
latency at batch 1 and 256, test accuracy) for the teacher and each student.

    .venv/bin/python benchmarks/distill_cifar10.py [--labels-per-class 500] [--epochs 20] [--seeds 0,1,2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from _shared_data import shared_weights, unpacked

from fewlabels.data import load_dataset
from fewlabels.engine.checkpoint import load_model
from fewlabels.methods.distill import compression_report, distill
from fewlabels.methods.supervised import train

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # the shared ResNets' normalisation


def _done(out: Path) -> dict | None:
    p = out / "results.json"
    return json.loads(p.read_text()) if p.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels-per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--students", default="resnet20,cnn-tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.labels_per_class, a.epochs, a.seeds = 20, 1, "0"
    seeds = [int(s) for s in a.seeds.split(",")]
    data, weights = unpacked("cifar10"), shared_weights("resnet56")
    root = Path("runs") / ("bench-distill" + ("-smoke" if a.smoke else ""))
    t_start = time.perf_counter()

    # the teacher: ResNet-56 fine-tuned on the JPEG training set (a short, low-LR pass; it already knows CIFAR-10)
    tdir = root / "teacher"
    teacher = _done(tdir) or train(
        data=str(data), model="resnet56", pretrained=str(weights), val=0, epochs=a.teacher_epochs,
        batch_size=128, lr=0.01, warmup_epochs=0, weight_decay=5e-4, eval_every=100, seed=0, out=str(tdir),
        quiet=True, **({"labels": 500} if a.smoke else {}), **IMAGENET)
    print(f"teacher resnet56: test {teacher['test_acc']:.4f}", flush=True)

    common = dict(data=str(data), labels_per_class=a.labels_per_class, val=0, epochs=a.epochs, batch_size=256,
                  lr=0.1, weight_decay=5e-4, warmup_epochs=1, min_steps_per_epoch=10, augment="weak",
                  eval_every=1000, split_seed=0, quiet=True, **IMAGENET)
    runs: dict[str, dict[str, list[float]]] = {}
    minutes: dict[str, dict[str, list[float]]] = {}
    for student in a.students.split(","):
        runs[student] = {"alone": [], "kd": []}
        minutes[student] = {"alone": [], "kd": []}
        for seed in seeds:
            for kind in ("alone", "kd"):
                out = root / f"{student}-{kind}-s{seed}"
                t0 = time.perf_counter()
                if kind == "alone":
                    r = _done(out) or train(model=student, seed=seed, out=str(out), **common)
                else:
                    r = _done(out) or distill(teacher=str(tdir), model=student, seed=seed, out=str(out),
                                              alpha=a.alpha, temperature=a.temperature, **common)
                runs[student][kind].append(r["test_acc"])
                minutes[student][kind].append(r.get("train_minutes", (time.perf_counter() - t0) / 60))
                print(f"{student} {kind} seed {seed}: test {r['test_acc']:.4f}", flush=True)

    ds = load_dataset(str(data), progress=False)
    device = torch.device("cpu")
    models = {"teacher": load_model(tdir, device)}
    for student in runs:
        models[student] = load_model(root / f"{student}-kd-s{seeds[0]}", device)
    compression = compression_report(models, ds.test, device)

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    students = {}
    for s, r in runs.items():
        students[s] = {"student_alone_mean": statistics.mean(r["alone"]), "student_alone_std": sd(r["alone"]),
                       "student_kd_mean": statistics.mean(r["kd"]), "student_kd_std": sd(r["kd"]),
                       "alone": r["alone"], "kd": r["kd"],
                       "gain_points": (statistics.mean(r["kd"]) - statistics.mean(r["alone"])) * 100,
                       "minutes_alone_mean": statistics.mean(minutes[s]["alone"]),
                       "minutes_kd_mean": statistics.mean(minutes[s]["kd"])}
    first = students[next(iter(students))]
    data_out = {"teacher": teacher["test_acc"], "teacher_model": "resnet56 (../shared, fine-tuned on JPEG train)",
                "labels": a.labels_per_class * 10, "epochs": a.epochs, "alpha": a.alpha,
                "temperature": a.temperature, "seeds": seeds,
                # the first student's figures at top level (the keys); every student under `students`
                "student": next(iter(students)), **{k: first[k] for k in ("student_alone_mean", "student_alone_std",
                                                                            "student_kd_mean", "student_kd_std")},
                "students": students, "compression": compression, "target_gain_points": 1.5,
                "met": {s: v["gain_points"] >= 1.5 for s, v in students.items()},
                "total_minutes": (time.perf_counter() - t_start) / 60, "smoke": a.smoke}
    table = (f"Teacher ResNet-56 test accuracy {teacher['test_acc']:.4f}. "
             f"Students on {a.labels_per_class * 10} labels, "
             f"{a.epochs} epochs, seeds {seeds}, α = {a.alpha}, T = {a.temperature}.\n\n"
             "| student | alone (mean ± std) | with KD (mean ± std) | gain (points) | target +1.5 |\n"
             "|---|---|---|---|---|\n"
             + "".join(f"| {s} | {v['student_alone_mean']:.4f} ± {v['student_alone_std']:.4f} | "
                       f"{v['student_kd_mean']:.4f} ± {v['student_kd_std']:.4f} | {v['gain_points']:+.2f} | "
                       f"{'met' if v['gain_points'] >= 1.5 else 'NOT met'} |\n" for s, v in students.items())
             + "\n| model | params | MFLOPs/img | ms/img batch 1 | ms/img batch 256 | test acc |\n"
             "|---|---|---|---|---|---|\n"
             + "".join(f"| {n} ({c['model']}) | {c['params'] / 1e6:.2f} M | {c['flops_per_image'] / 1e6:.1f} | "
                       f"{c['latency_ms_batch1']:.2f} | {c['latency_ms_per_image_batch256']:.3f} | "
                       f"{c['test_accuracy']:.4f} |\n" for n, c in compression.items()))
    write_results("distill_cifar10" + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""Knowledge distillation on CIFAR-10 (JPEG copy in ../shared).

Teacher: the ../shared ResNet-56 (trained on the original CIFAR-10) fine-tuned on the JPEG training set (all 50,000
labels) by `fewlabels train --pretrained`. Students: ResNet-20 and the compact cnn-tiny, trained from scratch on 500
labels per class, alone (`fewlabels train`) vs with KD (`fewlabels distill`: α·T²·KL + (1 − α)·CE, α = 0.9, T = 4)
at equal epochs, over 3 seeds. The teacher runs live on every augmented batch (no cached logits). Also writes the
compression report (parameters, FLOPs, CPU latency at batch 1 and 256, test accuracy) for the teacher and each
student, measured on the finished runs' checkpoints.

    .venv/bin/python benchmarks/distill_cifar10.py [--students resnet20,cnn-tiny] [--seeds 0,1,2] [--smoke]
        [-- FEWLABELS OPTIONS]

Options after `--` go verbatim to every student command (`train` and `distill`), e.g. `-- --epochs 30`. A finished
run folder (its results.json) is read back instead of run again; the results list each command either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_name, run_fewlabels, run_options, shown, split_passthrough, started, write_results

IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]  # the shared ResNets' normalisation
# the teacher: a short, low-LR pass of the shared ResNet-56 (it already knows CIFAR-10) over the JPEG training set
TEACHER = ["--model", "resnet56", "--val", "0", "--epochs", "1", "--batch-size", "128", "--lr", "0.01",
           "--warmup-epochs", "0", "--weight-decay", "0.0005", "--eval-every", "100", "--seed", "0", *IMAGENET]
STUDENT = ["--labels-per-class", "500", "--val", "0", "--epochs", "20", "--batch-size", "256", "--lr", "0.1",
           "--weight-decay", "0.0005", "--warmup-epochs", "1", "--min-steps-per-epoch", "10", "--augment", "weak",
           "--eval-every", "1000", "--split-seed", "0", *IMAGENET]
KD = ["--alpha", "0.9", "--temperature", "4"]
SMOKE_TEACHER = ["--labels", "500"]
SMOKE_STUDENT = ["--labels-per-class", "20", "--epochs", "1"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed verbatim to every student command")
    ap.add_argument("--students", default="resnet20,cnn-tiny", help="student models: one run per model, kind, seed")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked)")
    ap.add_argument("--weights", default=None, help="the teacher's start (default: ../shared/weights/resnet56-*.th)")
    ap.add_argument("--results-name", type=results_name, default="distill_cifar10")
    ap.add_argument("--smoke", action="store_true", help="500 teacher labels, 20 per class, 1 epoch, seed 0")
    return ap


def plan(a: argparse.Namespace, extra: list[str], data: str, weights: str) -> list[dict]:
    """Every command, in order: {"key", "student", "kind", "seed", "out", "args"} (args without `fewlabels`)."""
    root = Path("runs") / ("bench-distill" + ("-smoke" if a.smoke else ""))
    seeds = [0] if a.smoke else [int(s) for s in a.seeds.split(",")]
    tdir = root / "teacher"
    runs = [{"key": "teacher", "student": None, "kind": "teacher", "seed": 0, "out": tdir,
             "args": ["train", "--data", data, "--pretrained", weights, *TEACHER,
                      *(SMOKE_TEACHER if a.smoke else []), "--out", str(tdir)]}]
    for student in a.students.split(","):
        for seed in seeds:
            for kind in ("alone", "kd"):
                out = root / f"{student}-{kind}-s{seed}"
                head = ["train"] if kind == "alone" else ["distill", "--teacher", str(tdir)]
                runs.append({"key": f"{student}-{kind}-s{seed}", "student": student, "kind": kind, "seed": seed,
                             "out": out,
                             "args": [*head, "--data", data, "--model", student, "--seed", str(seed), *STUDENT,
                                      *(KD if kind == "kd" else []), *extra, *(SMOKE_STUDENT if a.smoke else []),
                                      "--out", str(out)]})
    return runs


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [["fewlabels", *r["args"]] for r in plan(build_parser().parse_args(own), extra, data, "WEIGHTS.th")]


def main() -> None:
    import torch

    from fewlabels.data import load_dataset
    from fewlabels.engine.checkpoint import load_model
    from fewlabels.methods.distill import compression_report

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    from _shared_data import shared_weights, unpacked

    data = a.data or str(unpacked("cifar10"))
    weights = a.weights or str(shared_weights("resnet56"))
    start = started()
    done: list[dict] = []
    for r in plan(a, extra, data, weights):
        res_file = r["out"] / "results.json"
        if res_file.is_file():  # finished earlier: read back
            print(f"(finished) {shown(r['args'])}", flush=True)
            run = {"command": shown(r["args"]), "minutes": None, "reused": True}
        else:
            run = run_fewlabels(r["args"])
        res = json.loads(res_file.read_text())
        done.append({"command": run["command"], "key": r["key"], "kind": r["kind"], "student": r["student"],
                     "seed": r["seed"], "test_acc": res["test_acc"],
                     "train_minutes": res.get("train_minutes"), "wall_minutes": run["minutes"],
                     **({"read_back": True} if run.get("reused") else {})})
        print(f"{r['key']}: test {res['test_acc']:.4f}", flush=True)
    teacher, students_runs = done[0], done[1:]
    seeds = sorted({r["seed"] for r in students_runs})
    first_kd = next(r for r in plan(a, extra, data, weights) if r["kind"] == "kd")
    opts = run_options(first_kd["out"])

    ds = load_dataset(data, progress=False)
    device = torch.device("cpu")
    tdir = plan(a, extra, data, weights)[0]["out"]
    models = {"teacher": load_model(tdir, device)}
    names = list(dict.fromkeys(r["student"] for r in students_runs))
    for student in names:
        models[student] = load_model(tdir.parent / f"{student}-kd-s{seeds[0]}", device)
    compression = compression_report(models, ds.test, device)

    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    def minutes(r: dict) -> float | None:
        return r["train_minutes"] if r["train_minutes"] is not None else r["wall_minutes"]

    students = {}
    for s in names:
        acc = {k: [r["test_acc"] for r in students_runs if r["student"] == s and r["kind"] == k]
               for k in ("alone", "kd")}
        mins = {k: [m for r in students_runs if r["student"] == s and r["kind"] == k if (m := minutes(r)) is not None]
                for k in ("alone", "kd")}
        students[s] = {"student_alone_mean": statistics.mean(acc["alone"]), "student_alone_std": sd(acc["alone"]),
                       "student_kd_mean": statistics.mean(acc["kd"]), "student_kd_std": sd(acc["kd"]),
                       "alone": acc["alone"], "kd": acc["kd"],
                       "gain_points": (statistics.mean(acc["kd"]) - statistics.mean(acc["alone"])) * 100,
                       "minutes_alone_mean": statistics.mean(mins["alone"]) if mins["alone"] else None,
                       "minutes_kd_mean": statistics.mean(mins["kd"]) if mins["kd"] else None}
    first = students[names[0]]
    labels = opts.get("labels") or (opts.get("labels_per_class") or 0) * 10
    data_out = {"teacher": teacher["test_acc"], "teacher_model": "resnet56 (../shared, fine-tuned on JPEG train)",
                "labels": labels, "epochs": opts.get("epochs"), "alpha": opts.get("alpha"),
                "temperature": opts.get("temperature"), "seeds": seeds,
                # the first student's figures at top level (the keys); every student under `students`
                "student": names[0], **{k: first[k] for k in ("student_alone_mean", "student_alone_std",
                                                              "student_kd_mean", "student_kd_std")},
                "students": students, "compression": compression, "target_gain_points": 1.5,
                "met": {s: v["gain_points"] >= 1.5 for s, v in students.items()},
                "total_minutes": sum(r["wall_minutes"] or 0 for r in done), "runs": done, "smoke": a.smoke, **start}
    table = (f"Teacher ResNet-56 test accuracy {teacher['test_acc']:.4f}. Students on {labels} labels, "
             f"{opts.get('epochs')} epochs, seeds {seeds}, α = {opts.get('alpha')}, T = {opts.get('temperature')}."
             "\n\n| student | alone (mean ± std) | with KD (mean ± std) | gain (points) | target +1.5 |\n"
             "|---|---|---|---|---|\n"
             + "".join(f"| {s} | {v['student_alone_mean']:.4f} ± {v['student_alone_std']:.4f} | "
                       f"{v['student_kd_mean']:.4f} ± {v['student_kd_std']:.4f} | {v['gain_points']:+.2f} | "
                       f"{'met' if v['gain_points'] >= 1.5 else 'NOT met'} |\n" for s, v in students.items())
             + "\n| model | params | MFLOPs/img | ms/img batch 1 | ms/img batch 256 | test acc |\n"
             "|---|---|---|---|---|---|\n"
             + "".join(f"| {n} ({c['model']}) | {c['params'] / 1e6:.2f} M | {c['flops_per_image'] / 1e6:.1f} | "
                       f"{c['latency_ms_batch1']:.2f} | {c['latency_ms_per_image_batch256']:.3f} | "
                       f"{c['test_accuracy']:.4f} |\n" for n, c in compression.items()))
    write_results(a.results_name + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

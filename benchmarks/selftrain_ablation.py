"""Noisy Student ablation on CIFAR-10 (JPEG copy in ../shared), 4,000 labels: one student round from one shared
teacher, changing one thing at a time — no noise, input noise only, input + model noise; hard vs soft pseudo-labels;
class balancing on vs off. Same student model, epochs and seed in every row.

Every run is a `fewlabels selftrain` command: the teacher with `--rounds 0`, then each variant with `--rounds 1`
in a folder that holds a copy of the teacher's round0/ and split.json (so all variants start from the same teacher;
pasted alone, a variant's command trains its own round-0 teacher first, with the same options).

    .venv/bin/python benchmarks/selftrain_ablation.py [--only 0,2] [--smoke] [-- FEWLABELS OPTIONS]

Options after `--` go verbatim to every command (teacher and variants), e.g. `-- --student-epochs 12`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flag_value, run_fewlabels, run_options, split_passthrough, started, write_results

# name → the variant's own options
VARIANTS = {
    "no noise": ["--student-augment", "none", "--student-drop-rate", "0", "--student-drop-path-rate", "0",
                 "--soft", "false", "--balance", "true"],
    "input noise (strong aug)": ["--student-augment", "strong", "--student-drop-rate", "0",
                                 "--student-drop-path-rate", "0", "--soft", "false", "--balance", "true"],
    "input + model noise": ["--student-augment", "strong", "--student-drop-rate", "0.3",
                            "--student-drop-path-rate", "0.1", "--soft", "false", "--balance", "true"],
    "input + model noise, soft labels": ["--student-augment", "strong", "--student-drop-rate", "0.3",
                                         "--student-drop-path-rate", "0.1", "--soft", "true", "--balance", "true"],
    "input + model noise, no balancing": ["--student-augment", "strong", "--student-drop-rate", "0.3",
                                          "--student-drop-path-rate", "0.1", "--soft", "false", "--balance", "false"],
}
# what every run shares (the teacher's options and the students' budget)
COMMON = ["--labels-per-class", "400", "--val", "0", "--teacher-model", "cnn-s", "--teacher-epochs", "60",
          "--student-models", "cnn-s", "--student-epochs", "6", "--batch-size", "256", "--lr", "0.1",
          "--weight-decay", "0.0005", "--warmup-epochs", "1", "--teacher-augment", "weak", "--threshold", "0.5",
          "--unlabelled-ratio", "3", "--min-steps-per-epoch", "0", "--seed", "0", "--split-seed", "0",
          "--eval-every", "100"]
SMOKE = ["--labels-per-class", "20", "--teacher-epochs", "1", "--student-epochs", "1", "--threshold", "0"]


NOTE = ("\nRead with the budget in mind: each student sees the same short budget (6 epochs by default, about 1,300 "
        "steps of 256). The noise-free student fits the pseudo-labels and beats its teacher, while RandAugment, "
        "dropout and stochastic depth leave it under-fitted (see the train losses) and below its teacher. Noisy "
        "Student's noise pays off when the student trains long enough to fit noised data.\n")


def _last_train_loss(path: Path) -> float:
    return json.loads(path.read_text().strip().splitlines()[-1])["train_loss"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed verbatim to every `fewlabels selftrain` command")
    ap.add_argument("--only", default="", help="comma-separated variant numbers (0-based) to run")
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked)")
    ap.add_argument("--smoke", action="store_true", help=f"adds {' '.join(SMOKE)}")
    return ap


def plan(a: argparse.Namespace, extra: list[str], data: str) -> list[dict]:
    """The teacher, then the chosen variants: {"label", "out", "args"} (args without `fewlabels`)."""
    root = Path("runs") / ("bench-selftrain_ablation" + ("_smoke" if a.smoke else ""))
    tail = [*extra, *(SMOKE if a.smoke else [])]
    runs = [{"label": "teacher", "out": root / "teacher",
             "args": ["selftrain", "--data", data, *COMMON, *tail, "--rounds", "0", "--out", str(root / "teacher")]}]
    chosen = [int(i) for i in a.only.split(",")] if a.only else range(len(VARIANTS))
    for i, (label, opts) in enumerate(VARIANTS.items()):
        if i in chosen:
            runs.append({"label": label, "out": root / f"v{i}",
                         "args": ["selftrain", "--data", data, *COMMON, *opts, *tail, "--rounds", "1", "--out",
                                  str(root / f"v{i}")]})
    return runs


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [["fewlabels", *r["args"]] for r in plan(build_parser().parse_args(own), extra, data)]


def main() -> None:
    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    start = started()
    teacher, *variants = plan(a, extra, a.data)
    runs = []
    teacher_dir = teacher["out"]
    run = run_fewlabels(teacher["args"])  # round 0 only; a finished one is resumed (read back)
    runs.append({"command": run["command"], "variant": "teacher", "wall_minutes": run["minutes"]})
    t0 = json.loads((teacher_dir / "rounds.json").read_text())[0]
    teacher_acc = t0["test_acc"]
    print(f"teacher: test {teacher_acc:.4f}", flush=True)
    rows = []
    for v in variants:
        out = v["out"]
        if not (out / "round1" / "results.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copytree(teacher_dir / "round0", out / "round0")
            shutil.copy(teacher_dir / "split.json", out / "split.json")
        run = run_fewlabels(v["args"])
        s = json.loads((out / "rounds.json").read_text())[1]
        o = run_options(out)
        row = {"variant": v["label"], "student_augment": o["student_augment"], "drop_rate": o["student_drop_rate"],
               "drop_path_rate": o["student_drop_path_rate"], "soft": o["soft"], "balance": o["balance"],
               "pseudo_labels": s["pseudo_labels"], "pl_precision": s["pl_precision"],
               "test_acc": s["test_acc"], "gain_points": (s["test_acc"] - teacher_acc) * 100,
               "minutes": s["minutes"],
               "final_train_loss": _last_train_loss(out / "round1" / "metrics.jsonl")}
        rows.append(row)
        runs.append({"command": run["command"], **row, "wall_minutes": run["minutes"]})
        print(json.dumps(row), flush=True)
    o = run_options(teacher_dir)
    student = flag_value(variants[0]["args"], "--student-models") if variants else None
    labels = o.get("labels") or (o.get("labels_per_class") or 0) * 10
    data_out = {"labels": labels, "teacher_model": o["teacher_model"], "student_model": student,
                "teacher_test_acc": teacher_acc, "student_epochs": o["student_epochs"], "threshold": o["threshold"],
                "rows": rows, "teacher_minutes": t0["minutes"],
                # training time of the teacher and every student (also when rows were read back from finished runs)
                "total_minutes": t0["minutes"] + sum(r["minutes"] for r in rows),
                "wall_minutes_this_invocation": sum(r["wall_minutes"] for r in runs),
                "runs": runs, "smoke": a.smoke, **start}
    table = (f"Teacher {o['teacher_model']} on {labels} labels: test {teacher_acc:.4f}. One {student} "
             f"student round, {o['student_epochs']} epochs, threshold {o['threshold']}.\n\n"
             "| variant | pseudo-labels | PL precision | student test | vs teacher | minutes |\n"
             "|---|---|---|---|---|---|\n"
             + "".join(f"| {r['variant']} | {r['pseudo_labels']} | {r['pl_precision']:.4f} | {r['test_acc']:.4f} | "
                       f"{r['gain_points']:+.1f} | {r['minutes']:.1f} |\n" for r in rows)
             + "\nStudent train loss at the end of the round (fit of the noised pseudo-labels): "
             + ", ".join(f"{r['variant']} {r['final_train_loss']:.3f}" for r in rows) + "\n" + NOTE)
    write_results("selftrain_ablation" + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

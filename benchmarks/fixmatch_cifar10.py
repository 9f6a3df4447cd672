"""An online baseline for the self-training benchmark: does refreshing pseudo-labels at every step beat offline rounds
on a CPU budget? FixMatch-style consistency (Sohn et al. 2020): each step the model labels a weakly augmented view
(pad-crop + flip) of unlabelled images, keeps the labels whose confidence is ≥ τ, and is trained to give those labels
to a strongly augmented view (RandAugment + Cutout) of the same images, next to cross-entropy on the labelled batch
(64 labelled + μ · 64 unlabelled images per step). Warm-started from the round-0 teacher of `selftrain_cifar10.py`
(cnn-s-p2, 60 epochs on the 4,000 labels), so its curve compares with the self-training rounds that start from the
same teacher (`selftrain_cifar10_4000_p2nw_r4`). This loop lives here, not in the library: it is the measurement
behind issue 6's note that online consistency does not pay at this budget, so its options (--epochs, --tau, --mu,
--labelled-batch, --lr) are this script's own. The teacher is a fewlabels command, recorded in the results:

    fewlabels selftrain --recipe cifar-cpu --rounds 0 --finetune-epochs 0 --progressive-resize none --eval-every 5 \
        --data ~/.cache/fewlabels/unpacked/cifar10 --labels-per-class 400 --out runs/bench-fixmatch_cifar10_4000-teacher

and the FixMatch loop uses that run's split (its labelled images and pool).

    .venv/bin/python benchmarks/fixmatch_cifar10.py [--teacher RUN/round0] [--epochs 16] [--tau 0.8] [--smoke]
        [-- TEACHER OPTIONS]

Options after `--` go verbatim to the teacher's `fewlabels selftrain` command, e.g. `-- --labels-per-class 25`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    flag_value,
    has_flag,
    results_name,
    run_fewlabels,
    split_passthrough,
    started,
    write_results,
)

from fewlabels.augment import build_augment
from fewlabels.data.prepare import DataConfig, prepare_data
from fewlabels.engine.checkpoint import load_model
from fewlabels.engine.config import TrainConfig
from fewlabels.engine.optim import build_optimizer, lr_factor, set_lr
from fewlabels.eval import accuracy, predict_logits
from fewlabels.utils import autocast, pick_device, pick_dtype, tune_cpu_allocator

# the round-0 teacher of `selftrain --recipe cifar-cpu` (cnn-s-p2, 60 epochs, flip + translate TTA), alone, as it was
# measured: at full size, evaluated every 5 epochs (the recipe has since taken 20-px progressive resizing)
TEACHER = ["--recipe", "cifar-cpu", "--rounds", "0", "--finetune-epochs", "0", "--progressive-resize", "none",
           "--eval-every", "5"]
SMOKE_TEACHER = ["--labels-per-class", "20", "--teacher-epochs", "1"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(epilog="options after -- are passed verbatim to the teacher's fewlabels command")
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked)")
    ap.add_argument("--teacher", default=None,
                    help="a finished round-0 folder (e.g. runs/bench-selftrain_cifar10_4000_p2nw_r4/round0); its "
                         "run's split is used; default: train one here (`fewlabels selftrain --rounds 0`)")
    ap.add_argument("--epochs", type=int, default=16, help="passes over the unlabelled pool")
    ap.add_argument("--tau", type=float, default=0.8, help="confidence threshold (FixMatch: 0.95)")
    ap.add_argument("--mu", type=int, default=7, help="unlabelled images per labelled image in a step")
    ap.add_argument("--labelled-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--results-name", type=results_name, default=None)
    ap.add_argument("--smoke", action="store_true")
    return ap


def teacher_args(a: argparse.Namespace, extra: list[str], data: str) -> list[str]:
    tail = [*extra, *(SMOKE_TEACHER if a.smoke else [])]
    budget = [] if has_flag(tail, "--labels-per-class") or has_flag(tail, "--labels") else ["--labels-per-class", "400"]
    labels = flag_value([*budget, *tail], "--labels")
    labels = int(labels) if labels else int(flag_value([*budget, *tail], "--labels-per-class")) * 10
    name = (a.results_name or f"fixmatch_cifar10_{labels}") + ("_smoke" if a.smoke else "")
    return ["selftrain", *TEACHER, "--data", data, *budget, *tail, "--out", f"runs/bench-{name}-teacher"]


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    return [] if a.teacher and not a.smoke else [["fewlabels", *teacher_args(a, extra, data)]]


def main() -> None:
    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.smoke:
        a.epochs, a.teacher = 1, None
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    data = a.data
    targs = teacher_args(a, extra, data)
    name = Path(flag_value(targs, "--out")).name.removeprefix("bench-").removesuffix("-teacher")
    started_info = started()
    tune_cpu_allocator()
    t_start = time.perf_counter()
    teacher_minutes, runs = None, []
    if a.teacher is None:
        out = Path(flag_value(targs, "--out"))
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: an existing folder would be resumed
        run = run_fewlabels(targs)
        teacher_dir = out / "round0"
        teacher_minutes = json.loads((out / "rounds.json").read_text())[0]["minutes"]
        runs.append({"command": run["command"], "what": "the round-0 teacher", "minutes": run["minutes"]})
    else:
        teacher_dir = Path(a.teacher)
    # the teacher run's split: its labelled images and unlabelled pool
    ds, split = prepare_data(DataConfig(data=data, split=str(teacher_dir.parent / "split.json"), val=0), None,
                             lambda *_: None)
    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    model, _ = load_model(teacher_dir, device)
    model = model.to(memory_format=torch.channels_last)
    lab = ds.train.subset(split.labelled)
    lab_x, lab_y = lab.images.to(device), lab.labels.to(device)
    pool_x = ds.train.images[split.unlabelled].to(device)
    pool_y = ds.train.labels[split.unlabelled].to(device)  # only to report pseudo-label precision
    mean, std = ds.mean, ds.std
    weak = build_augment("weak", image_size=pool_x.shape[-1])
    strong = build_augment("strong", image_size=pool_x.shape[-1])
    bl, bu = a.labelled_batch, a.labelled_batch * a.mu
    steps = max(1, pool_x.shape[0] // bu)
    if a.smoke:
        steps = min(steps, 3)
    total = steps * a.epochs
    opt = build_optimizer(model, TrainConfig(lr=a.lr, epochs=a.epochs), None)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cl = torch.channels_last

    eval_s = 0.0  # evaluation time, left out of the training minutes

    def test_acc() -> float:
        nonlocal eval_s
        t_eval = time.perf_counter()
        model.eval()
        logits = predict_logits(model, ds.test.images, mean, std, batch_size=1024, device=device, dtype=dtype,
                                tta_flip=True, tta_translate=1)
        model.train()
        eval_s += time.perf_counter() - t_eval
        return accuracy(logits, ds.test.labels)

    def view(aug, x: torch.Tensor) -> torch.Tensor:
        return aug.normalized(x, mean, std, generator=g, out=torch.empty(x.shape, device=device, memory_format=cl))

    curve = [{"epoch": 0, "minutes": 0.0, "test_acc": test_acc()}]
    print(json.dumps(curve[-1]), flush=True)
    t0, eval_s = time.perf_counter(), 0.0
    for ep in range(a.epochs):
        model.train()
        perm_u = torch.randperm(pool_x.shape[0], generator=g)
        perm_l = torch.cat([torch.randperm(len(lab), generator=g) for _ in range(math.ceil(steps * bl / len(lab)))])
        kept = right = loss_sum = 0.0
        for i in range(steps):
            set_lr(opt, a.lr, lr_factor(ep * steps + i, total, round(0.5 * steps), "cosine"))
            il, iu = perm_l[i * bl:(i + 1) * bl].to(device), perm_u[i * bu:(i + 1) * bu].to(device)
            xl, xu = view(weak, lab_x[il]), pool_x[iu]
            xw, xs = view(weak, xu), view(strong, xu)
            with torch.no_grad(), autocast(device, dtype):
                conf, pl = model(xw).float().softmax(1).max(1)
            mask = (conf >= a.tau).float()
            with autocast(device, dtype):
                out = model(torch.cat([xl, xs])).float()
            loss = F.cross_entropy(out[:bl], lab_y[il]) + (F.cross_entropy(out[bl:], pl, reduction="none")
                                                            * mask).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            kept += mask.sum().item()
            right += ((pl == pool_y[iu]).float() * mask).sum().item()
            loss_sum += loss.item()
        row = {"epoch": ep + 1, "minutes": round((time.perf_counter() - t0 - eval_s) / 60, 2),
               "loss": round(loss_sum / steps, 4), "mask_rate": round(kept / (steps * bu), 3),
               "pl_precision": round(right / max(kept, 1), 4)}
        if (ep + 1) % 2 == 0 or ep + 1 == a.epochs:
            row["test_acc"] = test_acc()
        curve.append(row)
        print(json.dumps(row), flush=True)
    minutes = (time.perf_counter() - t0 - eval_s) / 60  # training only
    start, last = curve[0]["test_acc"], curve[-1]["test_acc"]
    ref = RESULTS / "selftrain_cifar10_4000_p2nw_r4.json"
    offline = []
    if ref.is_file() and len(split.labelled) == 4000 and teacher_dir.name == "round0":  # a comparison from round 0
        acc_min = 0.0
        for r in json.loads(ref.read_text())["table"][1:]:
            acc_min += r["minutes"]
            offline.append({"round": r["round"], "model": r["model"], "minutes": round(acc_min, 2),
                            "test_acc": r["test_acc"]})
    data_out = {"labels": len(split.labelled), "teacher": str(teacher_dir), "teacher_minutes": teacher_minutes,
                "teacher_test_acc": start, "final_test_acc": last, "fixmatch_minutes": minutes, "curve": curve,
                "options": vars(a), "offline_rounds_same_teacher": offline,
                "total_minutes": (time.perf_counter() - t_start) / 60, "smoke": a.smoke, **started_info,
                "runs": runs, "fixmatch": "this script's own loop (not a fewlabels command), options: "
                                          f"{' '.join(own) or 'the defaults'}"}
    md = ["| epoch | training minutes | mask rate | pl precision | test_acc |", "|---|---|---|---|---|"]
    for r in curve:
        acc = f"{r['test_acc']:.4f}" if "test_acc" in r else "–"
        md.append(f"| {r['epoch']} | {r['minutes']:.2f} | {r.get('mask_rate', '–')} | {r.get('pl_precision', '–')} "
                  f"| {acc} |")
    table = "\n".join(md) + (f"\n\nFixMatch (τ {a.tau}, μ {a.mu}) from the teacher's {start:.4f}: {last:.4f} "
                             f"({(last - start) * 100:+.1f} points) in {minutes:.1f} training minutes "
                             "(evaluations excluded)\n")
    if offline:
        table += ("\nOffline self-training rounds from the same teacher (`selftrain_cifar10_4000_p2nw_r4`), minutes "
                  "after the teacher: " + ", ".join(f"round {o['round']} ({o['model']}) {o['test_acc']:.4f} at "
                                                    f"{o['minutes']:.1f}" for o in offline) + "\n")
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""Transfer learning: ResNet-56 trained on the original CIFAR-10 (../shared/weights) → the JPEG CIFAR-10 copy in
../shared (a real domain shift), with 250, 1,000 and 4,000 labels: scratch vs linear probe vs fine-tune, one
`fewlabels transfer --mode compare` command per label budget.

Also measures `probe_epoch_speedup` with the library's internals: a probe epoch that re-runs the frozen backbone
over the labelled images vs one over cached features (target ≥ 20×).

    .venv/bin/python benchmarks/transfer_cifar10.py [--budgets 250,1000,4000] [--smoke] [-- FEWLABELS OPTIONS]

Options after `--` go verbatim to every `fewlabels transfer` command, e.g. `-- --epochs 40`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_name, run_fewlabels, run_options, split_passthrough, started, write_results

from fewlabels.data import load_dataset
from fewlabels.methods.transfer import extract_features
from fewlabels.models import create_model, load_pretrained

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # what the shared ResNets were trained with
# one budget's command, after `--data DATA --labels N`: the shared ResNet-56 as the start of probe and fine-tune
OPTIONS = ["--mode", "compare", "--val", "0", "--model", "resnet56", "--epochs", "30", "--batch-size", "128",
           "--lr", "0.05", "--backbone-lr", "0.005", "--weight-decay", "0.0005", "--min-steps-per-epoch", "10",
           "--warmup-epochs", "1", "--probe-epochs", "100", "--seed", "0", "--split-seed", "0", "--eval-every", "10",
           "--mean", ",".join(map(str, IMAGENET["mean"])), "--std", ",".join(map(str, IMAGENET["std"]))]
SMOKE = ["--epochs", "1"]
# --mode probe: the linear probe alone, with the probe options of the same commands
PROBE_OPTIONS = ["--mode", "probe", "--val", "0", "--model", "resnet56", "--batch-size", "128", "--probe-epochs",
                 "100", "--seed", "0", "--split-seed", "0",
                 "--mean", ",".join(map(str, IMAGENET["mean"])), "--std", ",".join(map(str, IMAGENET["std"]))]


def probe_epoch_speedup(data: Path, weights: Path, n: int = 4000, repeats: int = 3) -> dict:
    """Seconds of one probe epoch over n images: frozen backbone re-run + head step vs head step on cached features."""
    ds = load_dataset(str(data), progress=False)
    model = create_model("resnet56", 10)
    load_pretrained(model, str(weights))
    model = model.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    head = model.get_classifier().requires_grad_(True)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    images, labels = ds.train.images[:n], ds.train.labels[:n]
    dev = torch.device("cpu")

    def head_epoch(feats):
        for i in range(0, n, 256):
            loss = torch.nn.functional.cross_entropy(head(feats[i:i + 256]), labels[i:i + 256])
            opt.zero_grad()
            loss.backward()
            opt.step()

    rerun, cached = [], []
    feats = extract_features(model, images, IMAGENET["mean"], IMAGENET["std"], device=dev)
    for _ in range(repeats):
        t = time.perf_counter()
        head_epoch(extract_features(model, images, IMAGENET["mean"], IMAGENET["std"], device=dev))
        rerun.append(time.perf_counter() - t)
        t = time.perf_counter()
        head_epoch(feats)
        cached.append(time.perf_counter() - t)
    r, c = sorted(rerun)[repeats // 2], sorted(cached)[repeats // 2]
    return {"images": n, "rerun_backbone_seconds": r, "cached_features_seconds": c, "speedup": r / c}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed verbatim to every `fewlabels transfer` command")
    ap.add_argument("--budgets", default="250,1000,4000", help="label budgets: one command each")
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked)")
    ap.add_argument("--weights", default=None, help="the source model (default: ../shared/weights/resnet56-*.th)")
    ap.add_argument("--mode", default="compare", choices=("compare", "probe"),
                    help="compare: scratch, probe and fine-tune per budget; probe: the linear probe alone")
    ap.add_argument("--results-name", type=results_name, default=None,
                    help="default: transfer_cifar10 (transfer_cifar10_probe)")
    ap.add_argument("--smoke", action="store_true", help="100 labels, 1 epoch")
    return ap


def plan(a: argparse.Namespace, extra: list[str], data: str, weights: str) -> list[dict]:
    budgets = [100] if a.smoke else [int(b) for b in a.budgets.split(",")]
    runs = []
    for labels in budgets:
        out = f"runs/bench-transfer-{a.mode}-{labels}{'-smoke' if a.smoke else ''}"
        options, smoke = (OPTIONS, SMOKE) if a.mode == "compare" else (PROBE_OPTIONS, ["--probe-epochs", "10"])
        runs.append({"labels": labels, "out": Path(out),
                     "args": ["transfer", "--data", data, "--labels", str(labels), "--pretrained", weights, *options,
                              *extra, *(smoke if a.smoke else []), "--out", out]})
    return runs


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [["fewlabels", *r["args"]] for r in plan(build_parser().parse_args(own), extra, data, "WEIGHTS.th")]


def main() -> None:
    from _shared_data import shared_weights, unpacked

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    data = a.data or str(unpacked("cifar10"))
    weights = a.weights or str(shared_weights("resnet56"))
    start = started()
    name = a.results_name or ("transfer_cifar10" if a.mode == "compare" else "transfer_cifar10_probe")
    methods = ("scratch", "probe", "finetune") if a.mode == "compare" else ("probe",)
    rows, runs = [], []
    for r in plan(a, extra, data, weights):
        shutil.rmtree(r["out"], ignore_errors=True)  # a fresh run: an existing folder would be resumed
        run = run_fewlabels(r["args"])
        res = json.loads((r["out"] / "results.json").read_text())
        row = {"labels": r["labels"], **{m: res[m]["test_acc"] for m in methods},
               **{f"{m}_minutes": res[m]["minutes"] for m in methods},
               "total_minutes": run["minutes"]}
        rows.append(row)
        runs.append({"command": run["command"], **row})
        print(row, flush=True)
    opts = run_options(plan(a, extra, data, weights)[0]["out"])
    speed = probe_epoch_speedup(Path(data), Path(weights), n=500 if a.smoke else 4000)
    data_out = {"source": Path(weights).name, "target": "CIFAR-10 JPEG copy (../shared)", "rows": rows,
                "probe_epoch_speedup": speed["speedup"], "probe_epoch_timing": speed, "target_speedup": 20,
                **({"finetune_beats_scratch_everywhere": all(r["finetune"] > r["scratch"] for r in rows)}
                   if a.mode == "compare" else {}),
                "recipe": {"epochs": opts.get("epochs"), "min_steps_per_epoch": opts.get("min_steps_per_epoch"),
                           "lr_head": opts.get("lr"), "lr_backbone": opts.get("backbone_lr"),
                           "scratch_lr": opts.get("lr"), "probe_epochs": opts.get("probe_epochs"),
                           "normalisation": "ImageNet stats (as trained)"},
                "options": opts, "runs": runs, "smoke": a.smoke, **start}
    table = (f"| labels | {' | '.join(methods)} | minutes |\n|---|{'---|' * len(methods)}---|\n"
             + "".join(f"| {r['labels']} | " + " | ".join(f"{r[m]:.4f}" for m in methods) + " | "
                       + "/".join(f"{r[m + '_minutes']:.1f}" for m in methods) + " |\n" for r in rows)
             + f"\nprobe epoch on cached features vs re-running the frozen backbone: {speed['speedup']:.0f}× faster "
               f"(target ≥ 20×)\n")
    write_results(name + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""Transfer learning: ResNet-56 trained on the original CIFAR-10 (../shared/weights) → the JPEG CIFAR-10 copy in
../shared (a real domain shift), with 250, 1,000 and 4,000 labels: scratch vs linear probe vs fine-tune.

Also measures `probe_epoch_speedup`: a probe epoch that re-runs the frozen backbone over the labelled images vs one
over cached features (target ≥ 20×).

    .venv/bin/python benchmarks/transfer_cifar10.py [--budgets 250,1000,4000] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from _shared_data import shared_weights, unpacked

from fewlabels.data import load_dataset
from fewlabels.methods.transfer import extract_features, transfer
from fewlabels.models import create_model, load_pretrained

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # what the shared ResNets were trained with


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="250,1000,4000")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    if a.smoke:
        budgets, a.epochs = [100], 1
    data, weights = unpacked("cifar10"), shared_weights("resnet56")
    rows = []
    for labels in budgets:
        out = Path(f"runs/bench-transfer-{labels}{'-smoke' if a.smoke else ''}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        r = transfer(mode="compare", data=str(data), labels=labels, val=0, model="resnet56", pretrained=str(weights),
                     epochs=a.epochs, batch_size=128, lr=0.05, backbone_lr=0.005, weight_decay=5e-4,
                     min_steps_per_epoch=10, warmup_epochs=1, probe_epochs=100, seed=0, split_seed=0, out=str(out),
                     eval_every=10,
                     quiet=True, **IMAGENET)
        row = {"labels": labels, **{m: r[m]["test_acc"] for m in ("scratch", "probe", "finetune")},
               **{f"{m}_minutes": r[m]["minutes"] for m in ("scratch", "probe", "finetune")},
               "total_minutes": (time.perf_counter() - t0) / 60}
        rows.append(row)
        print(row, flush=True)
    speed = probe_epoch_speedup(data, weights, n=500 if a.smoke else 4000)
    data_out = {"source": weights.name, "target": "CIFAR-10 JPEG copy (../shared)", "rows": rows,
                "probe_epoch_speedup": speed["speedup"], "probe_epoch_timing": speed, "target_speedup": 20,
                "finetune_beats_scratch_everywhere": all(r["finetune"] > r["scratch"] for r in rows),
                "recipe": {"epochs": a.epochs, "min_steps_per_epoch": 10, "lr_head": 0.05, "lr_backbone": 0.005,
                           "scratch_lr": 0.05, "probe_epochs": 100, "normalisation": "ImageNet stats (as trained)"},
                "smoke": a.smoke}
    table = ("| labels | scratch | probe | finetune | minutes (s/p/f) |\n|---|---|---|---|---|\n"
             + "".join(f"| {r['labels']} | {r['scratch']:.4f} | {r['probe']:.4f} | {r['finetune']:.4f} | "
                       f"{r['scratch_minutes']:.1f}/{r['probe_minutes']:.1f}/{r['finetune_minutes']:.1f} |\n"
                       for r in rows)
             + f"\nprobe epoch on cached features vs re-running the frozen backbone: {speed['speedup']:.0f}× faster "
               f"(target ≥ 20×)\n")
    write_results("transfer_cifar10" + ("_smoke" if a.smoke else ""), data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

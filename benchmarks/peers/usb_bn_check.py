"""Would USB do better at these budgets with fresh BatchNorm statistics? A check of saved USB runs.

USB's WRN-28-2 keeps its BatchNorm running statistics with momentum 0.001 (semilearn/nets/wrn/wrn.py, fixed in the
code, not a recipe option): an average over the last ~1,000 iterations, negligible in its 1,048,576-iteration recipe
but a large share of a CPU budget of a few thousand, during which the weights move. Statistics that lag the weights
show as a model that scores far better in training mode than in evaluation mode, and as precision well above recall.

This script loads the checkpoint a `usb_run.py` run saved (`~/.cache/fewlabels/peers/usb_runs/<alg>_<B>m_seed0/
latest_model.pth`), takes the model USB tests (its EMA model) and tests it twice on the same test images as the run:
as trained, and after recomputing every BatchNorm layer's statistics as a plain average over clean training images
(the 4,000 labelled and the first 2,000 unlabelled; no label is read: precise BN, as pycls does). The second figure
is an aid USB does not ship, so the side-by-side table keeps USB as its users run it and shows this beside it.

    benchmarks/peers/.venv-usb/bin/python benchmarks/peers/usb_bn_check.py [--runs supervised_60m_seed0,...]

Appends one JSON line per run to ~/.cache/fewlabels/peers/usb_bn_check.jsonl, which collect.py reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from semilearn import get_net_builder  # noqa: E402
from usb_run import ARRAYS, PEERS, load_arrays, usb_transforms  # noqa: E402


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, tf, batch: int = 256) -> float:
    from PIL import Image

    model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        xb = torch.stack([tf(Image.fromarray(im)) for im in x[i:i + batch]])
        hits += int((model(xb)["logits"].argmax(1).numpy() == y[i:i + batch]).sum())
    return hits / len(x)


@torch.no_grad()
def recompute_bn(model: torch.nn.Module, x: np.ndarray, tf, batch: int = 256) -> None:
    """Every BatchNorm layer's running statistics as the plain average over `x` (momentum None), in training mode."""
    from PIL import Image

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(torch.stack([tf(Image.fromarray(im)) for im in x[i:i + batch]]))
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=None, help="run names under --save-dir (default: every run there)")
    ap.add_argument("--save-dir", type=Path, default=PEERS / "usb_runs")
    ap.add_argument("--arrays", type=Path, default=ARRAYS)
    ap.add_argument("--unlabelled", type=int, default=2_000, help="unlabelled images added to the BN pass")
    ap.add_argument("--test-images", type=int, default=None, help="test on an evenly spaced subset (a quick check)")
    ap.add_argument("--results", type=Path, default=PEERS / "usb_bn_check.jsonl")
    a = ap.parse_args()
    arr = load_arrays(a.arrays)
    tx, ty = arr["test_x"], arr["test_y"]
    if a.test_images is not None and a.test_images < len(ty):
        keep = np.linspace(0, len(ty) - 1, a.test_images).round().astype(int)
        tx, ty = tx[keep], ty[keep]
    bn_x = np.concatenate([arr["labelled_x"], arr["unlabelled_x"][:a.unlabelled]])
    _, _, val = usb_transforms()
    names = a.runs.split(",") if a.runs else sorted(p.name for p in a.save_dir.iterdir() if p.is_dir())
    for name in names:
        path = a.save_dir / name / "latest_model.pth"
        if not path.is_file():
            sys.exit(f"no {path}: run usb_run.py for it first")
        t0 = time.perf_counter()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = get_net_builder("wrn_28_2", from_name=False)(num_classes=10)
        model.load_state_dict(state["ema_model"])  # the model USB evaluates and reports
        shipped = accuracy(model, tx, ty, val)
        recompute_bn(model, bn_x, val)
        fresh = accuracy(model, tx, ty, val)
        alg, budget = name.split("_")[0], float(name.split("_")[1].rstrip("m"))
        row = {"algorithm": alg, "budget_minutes": budget, "run": name, "test_images": len(ty),
               "test_acc_as_trained": round(shipped, 4), "test_acc_bn_recomputed": round(fresh, 4),
               "bn_images": len(bn_x), "seconds": round(time.perf_counter() - t0, 1),
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        print(json.dumps(row), flush=True)
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

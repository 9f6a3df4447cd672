"""Would an ensemble of a self-training run's teachers give better pseudo-labels than the last teacher alone?

Reads a finished `selftrain` run (e.g. one of selftrain_cifar10.py's, under runs/), predicts the unlabelled pool
with each round's model (the run's own teacher test-time augmentation) and reports, for the teacher of each round,
the pool accuracy and the precision of the selected pseudo-labels (the run's threshold and balancing) when the
softmaxes of the last 1, 2 or 3 models are averaged.

    .venv/bin/python benchmarks/selftrain_teacher_ensemble.py runs/bench-selftrain_cifar10_4000_p2nw_ft_amd
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import results_name, write_results

from fewlabels.config import resolve
from fewlabels.data.prepare import prepare_data
from fewlabels.engine.checkpoint import load_model
from fewlabels.errors import FewLabelsError
from fewlabels.methods.pseudolabel import labels_from_logits, pool_logits, quality
from fewlabels.methods.selftrain import SelfTrainCommand


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a finished selftrain run folder")
    ap.add_argument("--max-models", type=int, default=3, help="ensembles of up to this many consecutive models")
    ap.add_argument("--results-name", type=results_name, default="selftrain_teacher_ensemble")
    a = ap.parse_args()
    run = Path(a.run)
    if not (run / "config.yaml").is_file():
        raise FewLabelsError(f"{run} is not a selftrain run folder (no config.yaml): pass the --out of a finished run")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    cfg = resolve(SelfTrainCommand, overrides={k: v for k, v in saved.items()
                                               if k in SelfTrainCommand.options})
    ds, split = prepare_data(cfg, None, lambda *_: None)
    pool = ds.train.subset(split.unlabelled)
    if not bool((pool.labels >= 0).all()):
        raise FewLabelsError("the pool's true labels are unknown: precision cannot be measured on this run")
    logits, rows = {}, []
    for r in range(cfg.rounds + 1):
        t0 = time.perf_counter()
        model, meta = load_model(run / f"round{r}")
        logits[r] = pool_logits(model, meta, pool, tta_flip=cfg.tta_flip_teacher,
                                tta_translate=cfg.tta_translate_teacher).float()
        print(f"round{r} model: pool accuracy {(logits[r].argmax(1) == pool.labels).float().mean():.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r in range(cfg.rounds + 1):
        for k in range(1, a.max_models + 1):
            if r - k + 1 < 0:
                break
            group = [logits[j] for j in range(r, r - k, -1)]
            pl = labels_from_logits(group, hard=not cfg.soft, temperature=cfg.temperature, threshold=cfg.threshold,
                                    balance=cfg.balance, per_class=cfg.per_class)
            mean = torch.stack([g.softmax(1) for g in group]).mean(0)
            rows.append({"labels_round": r + 1, "models": f"round{r - k + 1}-{r}" if k > 1 else f"round{r}",
                         "n_models": k, "pool_acc": round(float((mean.argmax(1) == pool.labels).float().mean()), 4),
                         "pl_precision": round(quality(pl, pool.labels, ds.train.classes)["precision"], 4),
                         "selected": len(pl)})
    cols = ["labels_round", "models", "n_models", "pool_acc", "pl_precision", "selected"]
    table = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                      + ["| " + " | ".join(str(row[c]) for c in cols) + " |" for row in rows]) + "\n"
    write_results(a.results_name, {"run": str(run), "threshold": cfg.threshold, "rows": rows}, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

"""`fewlabels suggest`: which unlabelled images to label next (active learning, one round).

A trained model looks at the user's unlabelled pool (:mod:`fewlabels.data.pool`, decoded at the model's own image
size and channels, so the user never gives an image size) and ranks it by one of:

margin    smallest gap between the top two class probabilities first: the images on a decision boundary. Cheap,
          and the strongest of the simple uncertainty rules in most comparisons (e.g. Munjal et al. 2022); the
          default.
entropy   highest predictive entropy first: uncertainty over all classes, not only the top two (with many classes
          it favours images the model finds confusing among several).
random    a seeded shuffle: the baseline every active-learning claim is measured against, and not a bad one when the
          model is still weak (uncertainty from a model trained on very few labels is itself unreliable).
kcenter   k-center greedy on L2-normalised penultimate features (Sener & Savarese 2018, core-set): each pick is the
          image farthest from everything labelled or picked so far, so the batch covers the pool instead of piling
          onto one confusing region, which uncertainty rules do when asked for many images at once. The labelled set
          is the run's labelled training images (its config.yaml + split.json); for a bare checkpoint, or when they
          cannot be loaded, the walk starts at the most uncertain image by margin, and the result's info says so.

The output is a CSV, ``rank,path,predicted,confidence,margin,entropy,label`` (probabilities of the softmax, entropy
in nats), paths absolute, ``label`` empty for the user to fill in. It is itself a manifest (``path`` and ``label``
columns, the others are ignored): filled in, it can be passed as --data, or its rows appended to an existing
manifest. An existing file is never replaced without --overwrite.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from ..config import Options, group, opt
from ..console import Console
from ..data.pool import list_pool, load_pool
from ..data.prepare import DataConfig, Pool, Source, prepare_data
from ..engine.checkpoint import load_model
from ..engine.config import Compute, Device, Seed
from ..errors import FewLabelsError
from ..eval import predict_logits
from ..runs import output_file, run_of
from ..utils import atomic_write_text, pick_device, pick_dtype
from .common import Run, check_classes
from .supervised import Trained

STRATEGIES = ("margin", "entropy", "random", "kcenter")
COLUMNS = ("rank", "path", "predicted", "confidence", "margin", "entropy", "label")
ROWS_RETURNED = 10  # rows in the returned dict; the CSV has them all
KCENTER_CHUNK = 4096  # rows × columns of one block of the labelled-to-pool distances (64 MB in float32)


@group
class Suggest:
    """How many images to suggest, and how they are chosen."""

    budget: int | None = opt(None, "how many images to suggest: the number you will label next", ge=1)
    strategy: str = opt("margin", "margin (closest call between the top two classes), entropy (most uncertain over "
                        "all classes), random (seeded baseline) or kcenter (diverse: farthest from the labelled "
                        "images in feature space)", choices=STRATEGIES)
    exclude: list[str] | None = opt(None, "images you have labelled already (a manifest/CSV list or a folder): left "
                                    "out of the suggestions")


class SuggestCommand(Options):
    """Rank unlabelled images by how much labelling them should help a trained model, and write the top --budget of
    them to a CSV (rank,path,predicted,confidence,margin,entropy,label) with the label column empty. Fill in the
    labels, add the rows to your manifest and train again. --out defaults to RUN/suggestions.csv (./suggestions.csv
    for a checkpoint)."""

    groups = (Trained, Pool, Suggest, Run, Source, Seed, Device, Compute)
    hide = ("on", "data", "data_root", "image_size", "mean", "std", "precision", "channels_last")
    defaults = {"eval_batch_size": 512}
    renamed = {"batch_size": "eval_batch_size"}


def suggest(cfg: SuggestCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Write the --budget most useful unlabelled images to label next to a CSV; returns {"out", "strategy",
    "budget", "suggested", "pool", "excluded", "rows" (the first few, as dicts), "info"}. E.g.
    `suggest(model_path="runs/pets", unlabelled="photos/", budget=100, strategy="kcenter")`."""
    cfg = SuggestCommand.build(cfg, kwargs)
    log = Console.of(cfg)
    if not cfg.model_path:
        raise FewLabelsError("suggest needs a model: pass a run folder or checkpoint (model_path)")
    if not cfg.unlabelled:
        raise FewLabelsError("suggest needs the unlabelled images: pass --unlabelled FOLDER (or a CSV/TSV list)")
    if cfg.budget is None:
        raise FewLabelsError("suggest needs --budget N: how many images you will label next")
    if cfg.strategy != "random" and cfg.set_by_user(["seed"]):
        raise FewLabelsError(f"--seed only seeds --strategy random; --strategy {cfg.strategy} is deterministic: "
                             "drop --seed")
    run = Path(cfg.model_path).expanduser()
    out = output_file(cfg.out or default_out(run), cfg.overwrite, (".csv",))  # before minutes of decoding
    device = pick_device(cfg.device)
    model, meta = load_model(run, device)
    shape = model_shape(meta, run)
    pool = load_pool(cfg.unlabelled, shape, cache_dir=cfg.cache_dir, bad_images=cfg.bad_images,
                     progress=not cfg.quiet, classes=list(meta["classes"]))
    paths = list(pool.paths or [])
    keep = torch.arange(len(pool))
    notes: list[str] = []
    if cfg.exclude:
        done = {os.path.realpath(p) for p in list_pool(cfg.exclude)}
        keep = torch.tensor([i for i, p in enumerate(paths) if os.path.realpath(p) not in done], dtype=torch.long)
        if len(keep) < len(pool):
            notes.append(f"{len(pool) - len(keep)} of the {len(pool)} unlabelled images are in --exclude and were left "
                         "out")
        if not len(keep):
            raise FewLabelsError(f"every image of --unlabelled is in --exclude ({len(pool)} images): nothing is left "
                                 "to suggest; add new unlabelled images")
    n = len(keep)
    budget = min(cfg.budget, n)
    if cfg.budget > n:
        notes.append(f"--budget {cfg.budget} is more than the {n} unlabelled images: all {n} are listed")
    logits = predict_logits(model, pool.images, meta["mean"], meta["std"], batch_size=cfg.eval_batch_size,
                            device=device, dtype=pick_dtype("auto", device))[keep]
    pred, confidence, margin, entropy = uncertainty(logits)
    info: dict[str, Any] = {"model": str(run), "image_shape": list(shape)}
    if cfg.strategy == "margin":
        order = torch.argsort(margin, stable=True)[:budget]
    elif cfg.strategy == "entropy":
        order = torch.argsort(entropy, descending=True, stable=True)[:budget]
    elif cfg.strategy == "random":
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:budget]
        info["seed"] = cfg.seed
    else:
        feats = F.normalize(_features(model, pool.images, meta, device, cfg.eval_batch_size)[keep], dim=1)
        centers, why = labelled_features(run, meta, model, device, cfg)
        first = int(torch.argmin(margin))
        if centers is None:
            info["kcenter_start"] = f"the most uncertain image by margin ({paths[int(keep[first])]}): {why}"
            notes.append(f"kcenter starts from the most uncertain image, not from the labelled images: {why}")
        else:
            info["kcenter_start"] = why
        order = kcenter_greedy(feats.to(device), budget, centers=None if centers is None else centers.to(device),
                               first=first).cpu()
    rows = [{"rank": r + 1, "path": paths[int(keep[i])], "predicted": meta["classes"][int(pred[i])],
             "confidence": round(float(confidence[i]), 4), "margin": round(float(margin[i]), 4),
             "entropy": round(float(entropy[i]), 4)} for r, i in enumerate(order.tolist())]
    atomic_write_text(out, _csv(rows))
    for note in notes:
        log(f"note: {note}")
    log(f"wrote {len(rows)} suggestions ({cfg.strategy}) from {n} unlabelled images to {out}; label them, add them "
        "to your manifest and train again")
    return {"out": str(out), "strategy": cfg.strategy, "budget": cfg.budget, "suggested": len(rows), "pool": n,
            "excluded": len(pool) - n, "rows": rows[:ROWS_RETURNED], "info": {**info, "notes": notes}}


# ---------------------------------------------------------------------------------------------------- scores


def uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predicted class, top probability, top1 − top2 probability, entropy in nats) of each row of logits (N, K)."""
    logp = logits.float().log_softmax(1)
    p = logp.exp()
    top = p.topk(min(2, p.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    entropy = -(p * logp).nan_to_num().sum(1)  # p·log p → 0 as p → 0; log_softmax of -inf logits is -inf
    return p.argmax(1), top[:, 0], margin, entropy


def kcenter_greedy(features: torch.Tensor, budget: int, *, centers: torch.Tensor | None = None, first: int = 0,
                   chunk: int = KCENTER_CHUNK) -> torch.Tensor:
    """k-center greedy (Sener & Savarese 2018): `budget` distinct row indices of features (N, D), each the row
    farthest (Euclidean) from the centers and the rows picked before it. Without centers the walk starts at row
    `first`. Ties go to the lowest index.

    One vector of each row's squared distance to its nearest center is kept and lowered after each pick by one
    matrix-vector product (N·D work, nothing N×N); the distances to the centers are computed in chunk × chunk
    blocks computed in place (one 64 MB block at a time), so 50k pool × 50k labelled features need no 10 GB matrix.
    Squared distances by |x|² + |c|² − 2x·c: exact enough for the L2-normalised features they are used on."""
    x = features.float()
    n = x.shape[0]
    budget = min(int(budget), n)
    sq = (x * x).sum(1)
    nearest = torch.full((n,), math.inf, device=x.device)
    if centers is not None and len(centers):
        c = centers.to(x.device, torch.float32)
        csq = (c * c).sum(1)
        for i in range(0, n, chunk):
            xi = x[i:i + chunk]
            for j in range(0, c.shape[0], chunk):
                d = (xi @ c[j:j + chunk].T).mul_(-2).add_(sq[i:i + chunk, None]).add_(csq[None, j:j + chunk])
                nearest[i:i + chunk] = torch.minimum(nearest[i:i + chunk], d.min(1).values.clamp_min_(0))
        pick = int(torch.argmax(nearest))
    else:
        if not 0 <= first < max(n, 1):
            raise ValueError(f"first must index one of the {n} rows, got {first}")
        pick = first
    picks = []
    for step in range(budget):
        picks.append(pick)
        if step == budget - 1:
            break
        d = (sq + sq[pick] - 2 * (x @ x[pick])).clamp_min_(0)
        nearest = torch.minimum(nearest, d)
        nearest[pick] = -math.inf  # never again, even when every row left is a duplicate of a center
        pick = int(torch.argmax(nearest))
    return torch.tensor(picks, dtype=torch.long)


def _features(model: torch.nn.Module, images: torch.Tensor, meta: dict, device: torch.device,
              batch_size: int) -> torch.Tensor:
    """Pooled penultimate features (N, D) float32 on the CPU: the transfer probe's extraction, eval mode."""
    from .transfer import extract_features

    return extract_features(model, images, meta["mean"], meta["std"], device=device, batch_size=batch_size)


def labelled_features(run: Path, meta: dict, model: torch.nn.Module, device: torch.device,
                      cfg: SuggestCommand) -> tuple[torch.Tensor | None, str]:
    """L2-normalised features of the run's labelled training images (its config.yaml's data options and its
    split.json's labelled indices), and where they came from; (None, why not) when they cannot be had."""
    folder = run_of(run, "config.yaml", "split.json")
    if folder is None:
        return None, f"{run} is not a run folder with config.yaml and split.json"
    try:
        conf = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        known = set(DataConfig.options)
        values = {k: v for k, v in conf.items() if k in known}
        values["split"] = str(folder / "split.json")
        if cfg.cache_dir:
            values["cache_dir"] = cfg.cache_dir
        dc = DataConfig(**values)  # with the run's own pool, part of the index space of its split
        ds, split = prepare_data(dc, None, lambda *_: None)
        labelled = ds.train.subset(split.labelled)
        check_classes(meta, labelled.classes, f"the model at {run}", labelled)
    except (FewLabelsError, OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as err:
        return None, f"the labelled images of {folder} could not be loaded ({err})"
    if not len(labelled):
        return None, f"the run {folder} has no labelled images"
    feats = _features(model, labelled.images, meta, device, cfg.eval_batch_size)
    return F.normalize(feats, dim=1), f"the {len(labelled)} labelled training images of {folder}"


# ---------------------------------------------------------------------------------------------------- files


def default_out(run: Path) -> Path:
    """RUN/suggestions.csv for a run folder; ./suggestions.csv for a checkpoint (a checkpoint folder is replaced
    as a whole when the run saves again, and would take the file with it)."""
    if run.is_dir() and not (run / "model.json").is_file():
        return run / "suggestions.csv"
    return Path("suggestions.csv")


def model_shape(meta: dict, run: Path) -> tuple[int, int, int]:
    """(C, H, W) the model was trained on: the pool is decoded to exactly this."""
    try:
        h, w = (int(v) for v in meta["image_size"])
        return int(meta["in_chans"]), h, w
    except (KeyError, TypeError, ValueError):
        raise FewLabelsError(f"the checkpoint of {run} does not record its image size (model.json lacks "
                             "image_size): it was not written by this fewlabels version; retrain it") from None


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["rank"], r["path"], r["predicted"], f"{r['confidence']:.4f}", f"{r['margin']:.4f}",
                    f"{r['entropy']:.4f}", ""])
    return buf.getvalue()


__all__ = ["SuggestCommand", "kcenter_greedy", "suggest", "uncertainty"]

"""`fewlabels train`, `evaluate` and `predict`."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import command_config, opt
from ..data import Split, load_dataset
from ..data.folder import decode_files
from ..engine.checkpoint import load_model
from ..engine.config import TrainConfig
from ..engine.loop import fit
from ..errors import FewLabelsError
from ..eval import classification_report, final_report, predict_logits
from ..utils import atomic_write_text, pick_device, pick_dtype, write_json
from .common import (
    DataConfig,
    ModelConfig,
    RunConfig,
    build_model,
    check_classes,
    eval_sets,
    flags,
    labelled_trainset,
    options_given,
    prepare_data,
    run_folder,
    save_config,
    train_config,
)


@dataclass
class TrainCommand(RunConfig, TrainConfig, ModelConfig, DataConfig):
    """Train a classifier on the labelled images of a dataset."""


def train(cfg: TrainCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train a model; returns the results (also written to RUN/results.json): the metrics of the epoch saved as
    checkpoints/best, and that model's per-class report on the test images (else the validation images) as `report`
    ({"on", **classification_report}) with its `macro_f1` and `balanced_accuracy` also at the top. Keyword arguments
    are the same options as the command line (e.g. `train(data="digits", model="cnn-s", epochs=10)`)."""
    cfg = command_config(TrainCommand, cfg, kwargs)
    log = (lambda *_: None) if cfg.quiet else print
    run_dir = run_folder(cfg.out, "train")
    save_config(run_dir, cfg, "train")
    ds, split = prepare_data(cfg, run_dir, log)
    model, meta = build_model(cfg, ds, log, cfg.seed)
    tc = train_config(cfg, ds)
    evals = eval_sets(ds, split)
    result = fit(model, labelled_trainset(ds, split, cfg.label_smoothing), tc, norm=(ds.mean, ds.std), evals=evals,
                 run_dir=run_dir, meta=meta, log=log)
    out = {"run_dir": str(run_dir), "labels": len(split.labelled), **result.final,
           "last_epoch": result.history[-1] if result.history else {}}
    if "test_acc" in out:
        out["test_accuracy"] = out["test_acc"]
    # per-class metrics of checkpoints/best (not of fit's last-epoch model), evaluated as fit evaluated it
    report = final_report(result.best_model(), evals, (ds.mean, ds.std), batch_size=tc.eval_batch_size,
                          precision=tc.precision, tta_flip=tc.tta_flip, tta_translate=tc.tta_translate,
                          channels_last=tc.channels_last)
    if report is not None:
        out.update(macro_f1=report["macro_f1"], balanced_accuracy=report["balanced_accuracy"], report=report)
    write_json(run_dir / "results.json", out)
    scored = ", ".join(f"{name} accuracy {out[f'{key}_acc']:.4f}" for key, name in (("test", "test"),
                       ("val", "validation")) if out.get(f"{key}_acc") is not None)
    log(f"done: {run_dir}  " + (scored or "no validation or test images to score the model on"))
    return out


@dataclass
class EvaluateCommand(DataConfig):
    """Evaluate a trained model: accuracy, per-class precision, recall and F1, macro-F1, balanced accuracy, confusion
    matrix."""

    model_path: str = opt("", "run folder or checkpoint to evaluate")
    on: str = opt("test", "which images: test, val (the run's validation split) or train", choices=("test", "val",
                                                                                                      "train"))
    tta_flip: bool = opt(False, "average over the image and its mirror")
    tta_translate: int = opt(0, "also average over the image shifted by ± this many pixels (multi-crop TTA)", ge=0)
    device: str = opt("auto", "auto, cpu, cuda, ...")
    out: str | None = opt(None, "write the report as JSON here")


def evaluate(cfg: EvaluateCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Accuracy of a trained model on a dataset's test, validation or training images; returns {"accuracy", "n",
    "per_class_accuracy", "confusion_matrix" (rows: true class), "classes", "per_class" ({class: {"precision",
    "recall", "f1", "support"}}), "macro_f1", "balanced_accuracy", "model", "data", "on"} (also written to --out as
    JSON; see eval.classification_report). E.g. `evaluate(model_path="runs/digits", data="digits")`."""
    cfg = command_config(EvaluateCommand, cfg, kwargs)
    unused = options_given(cfg, ["labels", "labels_per_class", "val", "mean", "std", "split_seed"])
    if unused:
        raise FewLabelsError(f"evaluate does not use {flags(unused)}: it "
                             f"normalises as the model was trained, and --on val takes the run's split (or --split)")
    if not cfg.model_path:
        raise FewLabelsError("evaluate needs a model: pass a run folder or checkpoint")
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.model_path, device)
    size = cfg.image_size
    h, w = meta.get("image_size", (None, None))
    if size is None and h is not None and h == w:  # decode at the size the model was trained on, not full size
        size = int(h)
    ds = load_dataset(cfg.data, root=cfg.data_root, cache_dir=cfg.cache_dir, bad_images=cfg.bad_images,
                      image_size=size)
    check_classes(meta, ds.train.classes, f"the model at {cfg.model_path}", ds.train)
    if cfg.on == "test":
        if ds.test is None:
            raise FewLabelsError(f"{cfg.data} has no test split: use --on val")
        s = ds.test
    elif cfg.on == "val":
        if ds.val is not None:
            s = ds.val
        else:  # the validation images of the run's own split
            split_file = cfg.split or str(Path(cfg.model_path) / "split.json")
            s = ds.train.subset(Split.load(split_file, pool_size=len(ds.train)).val)
    else:
        s = ds.train
    logits = predict_logits(model, s.images, meta["mean"], meta["std"], device=device,
                            dtype=pick_dtype("auto", device), tta_flip=cfg.tta_flip,
                            tta_translate=cfg.tta_translate)
    report = classification_report(logits, s.labels, ds.train.classes)
    report.update({"model": cfg.model_path, "data": cfg.data, "on": cfg.on})
    if cfg.out:
        write_json(Path(cfg.out), report)
    return report


@dataclass
class PredictCommand:
    """Predict the classes of image files."""

    model_path: str = opt("", "run folder or checkpoint")
    inputs: list[str] = opt([], "image files or folders")
    top_k: int = opt(3, "classes per image", ge=1)
    format: str = opt("csv", "output format", choices=("csv", "json"))
    out: str | None = opt(None, "write here instead of standard output")
    tta_flip: bool = opt(False, "average over the image and its mirror")
    tta_translate: int = opt(0, "also average over the image shifted by ± this many pixels (multi-crop TTA)", ge=0)
    device: str = opt("auto", "auto, cpu, cuda, ...")
    quiet: bool = opt(False, "print nothing (the rows are still returned, and written with --out)")


def _collect(inputs: list[str]) -> list[str]:
    from ..data.folder import list_images

    files: list[str] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(str(p))
        else:
            raise FewLabelsError(f"no such file or folder: {p}")
    if not files:
        raise FewLabelsError(f"no image files found in {', '.join(inputs)}")
    return files


PREDICT_CHUNK_BYTES = 256 << 20  # decoded pixels held at once by predict, so a folder of any size fits in memory


def predict(cfg: PredictCommand | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Top-k classes of image files or folders; returns one {"file", "top": [{"class", "prob"}, ...]} per image and
    prints them as CSV or JSON (unless quiet, or written to --out). E.g.
    `predict(model_path="runs/digits", inputs=["a.png", "folder/"], top_k=3, quiet=True)`."""
    cfg = command_config(PredictCommand, cfg, kwargs)
    if not cfg.model_path:
        raise FewLabelsError("predict needs a model: pass a run folder or checkpoint (model_path)")
    if not cfg.inputs:
        raise FewLabelsError("predict needs images: pass image files or folders (inputs)")
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.model_path, device)
    files = _collect(cfg.inputs)
    shape = (meta["in_chans"], *meta["image_size"])
    chunk = max(1, PREDICT_CHUNK_BYTES // math.prod(shape))
    k = min(cfg.top_k, len(meta["classes"]))
    tops = []
    for start in range(0, len(files), chunk):
        # the training folder's decoding rules, so an image is seen as it would have been in training
        images = decode_files(files[start:start + chunk], shape, progress=not cfg.quiet)
        logits = predict_logits(model, images, meta["mean"], meta["std"], device=device,
                                dtype=pick_dtype("auto", device), tta_flip=cfg.tta_flip,
                                tta_translate=cfg.tta_translate)
        tops.append(logits.softmax(1).topk(k, dim=1))
    p, idx = torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])
    rows = [{"file": str(f), "top": [{"class": meta["classes"][int(j)], "prob": round(float(q), 6)}
                                     for q, j in zip(p[i], idx[i])]} for i, f in enumerate(files)]
    text = json.dumps(rows, indent=2) if cfg.format == "json" else _csv(rows, k)
    if cfg.out:
        atomic_write_text(Path(cfg.out), text)
    elif not cfg.quiet:
        print(text, end="" if text.endswith("\n") else "\n")
    return rows


def _csv(rows: list[dict], k: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")])
    for r in rows:
        w.writerow([r["file"]] + [v for t in r["top"] for v in (t["class"], t["prob"])])
    return buf.getvalue()

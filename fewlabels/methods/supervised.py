"""`fewlabels train`, `evaluate` and `predict`."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import Options, group, opt
from ..console import Console
from ..data import Split, load_dataset
from ..data.folder import decode_files
from ..data.prepare import Budget, Source, eval_sets, prepare_data
from ..engine.budget import TimeBudget, phase
from ..engine.budget import plan as plan_budget
from ..engine.checkpoint import load_model
from ..engine.config import TRAINING, TTA, Device
from ..engine.loop import Watch, fit
from ..errors import FewLabelsError
from ..eval import classification_report, predict_logits
from ..runs import output_file, run_folder, save_config
from ..utils import atomic_write_text, pick_device, pick_dtype, write_json
from .common import (
    Calibration,
    Format,
    Model,
    Run,
    budgeted,
    build_model,
    check_classes,
    labelled_trainset,
    report_run,
    scored,
    train_config,
    with_report,
)


class TrainCommand(Options):
    """Train a classifier on the labelled images of a dataset."""

    groups = (Run, Source, Budget, Model, *TRAINING, TimeBudget, Calibration)
    hide = ("overwrite", "unlabelled_ratio")  # no pseudo-labelled images to mix in


@group
class Trained:
    """A trained model and the images it is applied to."""

    model_path: str = opt("", "run folder or checkpoint of the trained model")
    on: str = opt("test", "which images: test, val (the run's validation split) or train",
                  choices=("test", "val", "train"))


def train(cfg: TrainCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train a model; returns the results (also written to RUN/results.json): the metrics of the epoch saved as
    checkpoints/best, and that model's per-class report on the test images (else the validation images) as `report`
    ({"on", **classification_report}) with its `macro_f1` and `balanced_accuracy` also at the top. Keyword arguments
    are the same options as the command line (e.g. `train(data="digits", model="cnn-s", epochs=10)`)."""
    cfg = TrainCommand.build(cfg, kwargs)
    log = Console.of(cfg)
    run_dir = run_folder(cfg.out, "train")
    cfg = save_config(run_dir, cfg, "train")
    ds, split = prepare_data(cfg, run_dir, log)
    model, meta = build_model(cfg.group(Model), ds, log, cfg.seed)
    tc = train_config(cfg, ds)
    evals = eval_sets(ds, split)
    trainset = labelled_trainset(ds, split, cfg.label_smoothing)
    budget = None
    if cfg.budget_minutes:
        budget = budgeted(run_dir, lambda: plan_budget([phase("train", model, trainset, tc, evals)],
                                                       cfg.budget_minutes), log)
        tc = tc.replace(epochs=budget["epochs"]["train"])
    t0 = time.perf_counter()
    result = fit(model, trainset, tc, watch=Watch(evals, run_dir, meta, log))
    out = {"run_dir": str(run_dir), "labels": len(split.labelled), **result.final,
           "last_epoch": result.history[-1] if result.history else {}}
    if budget is not None:
        out["budget"] = {**budget, "minutes": round((time.perf_counter() - t0) / 60, 2)}
    if "test_acc" in out:
        out["test_accuracy"] = out["test_acc"]
    with_report(out, result.best_model(), evals, (ds.mean, ds.std), tc,  # checkpoints/best's, not the last epoch's
                run_dir / "checkpoints" / "best" if cfg.calibrate else None, log)
    write_json(run_dir / "results.json", out)
    report_run(run_dir, log, ds, split)
    log(f"done: {run_dir}  {scored(out)}")
    return out


class EvaluateCommand(Options):
    """Evaluate a trained model: accuracy, per-class precision, recall and F1, macro-F1, balanced accuracy, confusion
    matrix."""

    groups = (Trained, Source, Budget, TTA, Device, Run)
    hide = ("mean", "std", "labels", "labels_per_class", "val", "test", "split_seed", "allow_overlap", "quiet")


def evaluate(cfg: EvaluateCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Accuracy of a trained model on a dataset's test, validation or training images; returns {"accuracy", "n",
    "per_class_accuracy", "confusion_matrix" (rows: true class), "classes", "per_class" ({class: {"precision",
    "recall", "f1", "support"}}), "macro_f1", "balanced_accuracy", "model", "data", "on"} (also written to --out as
    JSON; see eval.classification_report). E.g. `evaluate(model_path="runs/digits", data="digits")`."""
    cfg = EvaluateCommand.build(cfg, kwargs)
    out = output_file(cfg.out, cfg.overwrite) if cfg.out else None
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
    temperature = float(meta.get("temperature", 1.0))  # calibrated: the ECE and NLL of the calibrated probabilities
    report = classification_report(logits / temperature, s.labels, ds.train.classes)
    report.update({"model": cfg.model_path, "data": cfg.data, "on": cfg.on, "temperature": temperature})
    if out is not None:
        write_json(out, report)
    return report


@group
class Predict:
    """Which images predict reads and how it writes the classes."""

    inputs: list[str] = opt([], "image files or folders")
    top_k: int = opt(3, "classes per image", ge=1)


class PredictCommand(Options):
    """Predict the classes of image files."""

    groups = (Trained, Predict, Format, TTA, Device, Run, Source)
    hide = ("on", "data", "data_root", "cache_dir", "image_size", "mean", "std")
    allowed = {"format": ("csv", "json")}


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
    prints them as CSV or JSON (unless quiet, or written to --out). The model is a run folder, a checkpoint, or an
    .onnx file of `fewlabels export` (run with onnxruntime; classes and size from its sidecar JSON). E.g.
    `predict(model_path="runs/digits", inputs=["a.png", "folder/"], top_k=3, quiet=True)`."""
    cfg = PredictCommand.build(cfg, kwargs)
    out = output_file(cfg.out, cfg.overwrite) if cfg.out else None
    if not cfg.model_path:
        raise FewLabelsError("predict needs a model: pass a run folder or checkpoint (model_path)")
    if not cfg.inputs:
        raise FewLabelsError("predict needs images: pass image files or folders (inputs)")
    if str(cfg.model_path).lower().endswith(".onnx"):  # a file of `fewlabels export`, run with onnxruntime
        from .exported import OnnxClassifier

        onnx_model = OnnxClassifier(cfg.model_path, cfg.device)
        meta = onnx_model.meta
        run = lambda images: onnx_model.logits(images, cfg.tta_flip, cfg.tta_translate)  # noqa: E731
    else:
        device = pick_device(cfg.device)
        model, meta = load_model(cfg.model_path, device)
        run = lambda images: predict_logits(model, images, meta["mean"], meta["std"], device=device,  # noqa: E731
                                            dtype=pick_dtype("auto", device), tta_flip=cfg.tta_flip,
                                            tta_translate=cfg.tta_translate)
    files = _collect(cfg.inputs)
    shape = (meta["in_chans"], *meta["image_size"])
    chunk = max(1, PREDICT_CHUNK_BYTES // math.prod(shape))
    k = min(cfg.top_k, len(meta["classes"]))
    tops, skipped = [], {}
    for start in range(0, len(files), chunk):
        # the training folder's decoding rules, so an image is seen as it would have been in training
        bad: dict[int, str] = {}
        images = decode_files(files[start:start + chunk], shape, progress=not cfg.quiet,
                              skipped=bad if cfg.bad_images == "skip" else None)
        skipped.update({start + i: why for i, why in bad.items()})
        if len(images):
            logits = run(images)
            tops.append(logits.div(float(meta.get("temperature", 1.0))).softmax(1).topk(k, dim=1))  # calibrated
    found = iter(zip(torch.cat([t.values for t in tops]).tolist() if tops else [],
                     torch.cat([t.indices for t in tops]).tolist() if tops else []))
    rows = []
    for i, f in enumerate(files):
        if i in skipped:  # listed, with why, so that no input goes missing without a word
            rows.append({"file": str(f), "top": [], "skipped": skipped[i]})
            continue
        p, idx = next(found)
        rows.append({"file": str(f), "top": [{"class": meta["classes"][int(j)], "prob": round(float(q), 6)}
                                             for q, j in zip(p, idx)]})
    if skipped and not cfg.quiet:
        print(f"note: skipped {len(skipped)} unreadable image(s) (--bad-images skip), listed with why", file=sys.stderr)
    text = json.dumps(rows, indent=2) if cfg.format == "json" else _csv(rows, k)
    if out is not None:
        atomic_write_text(out, text)
    elif not cfg.quiet:
        print(text, end="" if text.endswith("\n") else "\n")
    return rows


def _csv(rows: list[dict], k: int) -> str:
    """file,class_1,prob_1,...; with a last column `skipped` (why) when some files could not be read."""
    skipped = any("skipped" in r for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"prob_{i}")]
               + (["skipped"] if skipped else []))
    for r in rows:
        cells = [v for t in r["top"] for v in (t["class"], t["prob"])]
        w.writerow([r["file"], *cells, *[""] * (2 * k - len(cells))] + ([r.get("skipped", "")] if skipped else []))
    return buf.getvalue()


def show_evaluation(report: dict) -> None:
    """Print `evaluate`'s report: accuracy, the per-class table and the confusion matrix."""
    print(f"accuracy {report['accuracy']:.4f} on {report['n']} {report['on']} images")
    per_class = report.get("per_class")
    num = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731  NaN (no images) or JSON's null
    if per_class:  # precision/recall/F1 tell a rare class's misses apart from the large classes' (recall = accuracy)
        cw = max(16, *(len(c) for c in per_class))
        print(f"  {'class':>{cw}s}  precision  recall      f1  support")
        for c, m in per_class.items():
            print(f"  {c:>{cw}s}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}")
        print(f"macro-F1 {num(report.get('macro_f1'))} (classes weigh the same)")
        print(f"balanced accuracy {num(report.get('balanced_accuracy'))} (mean recall over the classes)")
    else:  # a report written before per-class precision/recall
        for c, a in report["per_class_accuracy"].items():
            print(f"  {c:>16s}  {a:.4f}")
    if report.get("ece") is not None:
        t = report.get("temperature", 1.0)
        print(f"calibration: ECE {num(report['ece'])} ({report.get('bins', 15)} bins), NLL {num(report.get('nll'))}, "
              + (f"temperature {t:.3f}" if t != 1.0 else "uncalibrated (`fewlabels calibrate` fits a temperature)"))
    cm, classes = report.get("confusion_matrix"), report.get("classes", [])
    if not cm:
        return
    if len(classes) > 20:
        print(f"confusion matrix ({len(classes)} classes): in the JSON report (--out report.json)")
        return
    w = max(4, *(len(str(v)) for row in cm for v in row)) + 1
    # columns are named by class when every name fits the column, else by number (the rows say which is which)
    numbered = any(len(c) > w - 1 for c in classes)
    heads = [str(i) if numbered else c for i, c in enumerate(classes)]
    rows = [f"{c} ({i})" if numbered else c for i, c in enumerate(classes)]
    rw = max(16, *(len(r) for r in rows))
    print("confusion matrix (rows: true class, columns: predicted" + (" class number)" if numbered else ")"))
    print(" " * (rw + 2) + "".join(f"{n:>{w}s}" for n in heads))
    for r, row in zip(rows, cm):
        print(f"  {r:>{rw}s}" + "".join(f"{v:>{w}d}" for v in row))

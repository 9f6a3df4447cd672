"""Inference and metrics: the fast no-grad path used by evaluate, predict and pseudo-labelling."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .errors import FewLabelsError
from .utils import autocast, pick_dtype

if TYPE_CHECKING:
    from .data.imageset import ImageSet


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = True
              ) -> torch.Tensor:
    """uint8 (N, C, H, W) → normalised float32 (N, C, H, W), optionally channels_last."""
    x = (x_uint8.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def stats_tensors(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, ...]:
    return (torch.tensor(list(mean), dtype=torch.float32, device=device),
            torch.tensor(list(std), dtype=torch.float32, device=device))


def check_tta_translate(t: int, size: tuple[int, ...] | torch.Size) -> None:
    """Translate TTA shifts by reflection: t pixels need images larger than t."""
    h, w = size
    if t < 0 or (t > 0 and t >= min(h, w)):
        raise FewLabelsError(f"--tta-translate must be between 0 and {min(h, w) - 1} for {h}x{w} images, got {t}")


# Images per forward pass when the caller does not say. Memory sets it: a batch's activations are what evaluation
# adds (at 64 px: cnn-s +0.26 GB for 256 images, +0.94 GB for 1,024; cnn-m +0.43 / +1.6 GB), the logits are the same
# at any batch size, and on a 2-core CPU 1,024 was no faster (benchmarks/results/memory_folder_eval_batch.md).
EVAL_BATCH_SIZE = 256


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                   batch_size: int = EVAL_BATCH_SIZE, device: torch.device | None = None,
                   dtype: torch.dtype | None = None, tta_flip: bool = False, tta_translate: int = 0,
                   channels_last: bool = True, progress: str | None = None, gather: bool = True) -> torch.Tensor:
    """Logits (N, K) float32 on CPU for uint8 images (N, C, H, W), in eval mode, batch by batch, autocast: only one
    batch is ever converted to float, so memory stays at the model's activations for `batch_size` images.
    progress: a progress bar's title (images/s and ETA on stderr), shown on a terminal only.

    Under torchrun (gather=True) each rank predicts its contiguous share of the images and every rank gets all the
    logits, in dataset order: every rank must make the same call. gather=False: this process predicts them all (code
    that runs on one rank only).

    With tta_flip the logits of the image and its mirror are averaged. With tta_translate = t > 0 (airbench's
    multi-crop TTA) the result is 1/2 · (unshifted) + 1/4 · (shifted by (-t, -t)) + 1/4 · (shifted by (+t, +t)),
    each view with its mirror when tta_flip is on; the shifts pad by reflection.
    """
    t = int(tta_translate)
    check_tta_translate(t, images.shape[2:])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    m, s = stats_tensors(mean, std, device)
    out = []
    n = images.shape[0]
    start, stop = distributed.shard(n) if gather else (0, n)  # under torchrun: this rank's share, gathered below
    bar = None
    if progress is not None and sys.stderr.isatty() and distributed.rank() == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=stop - start, desc=progress, unit="img", unit_scale=True, leave=False, dynamic_ncols=True)
    if start == stop and n > 0:  # a rank with no share still says how many classes there are
        start, stop = 0, 0
        out.append(_views(model, normalize(images[:1].to(device), m, s, channels_last), False)[:0].cpu())
    for i in range(start, stop, batch_size):
        x = normalize(images[i:min(i + batch_size, stop)].to(device, non_blocking=True), m, s, channels_last)
        with autocast(device, dtype):
            z = _views(model, x, tta_flip)
            if t > 0:
                p = F.pad(x, (t, t, t, t), mode="reflect")
                shifted = [p[:, :, :-2 * t, :-2 * t], p[:, :, 2 * t:, 2 * t:]]
                z = 0.5 * z + 0.25 * sum(_views(model, v.contiguous(memory_format=fmt), tta_flip) for v in shifted)
        out.append(z.cpu())
        if bar is not None:
            bar.update(min(batch_size, stop - i))
    if bar is not None:
        bar.close()
    model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    return distributed.gather_rows(logits, n) if gather and n > 0 else logits


def _views(model: nn.Module, x: torch.Tensor, flip: bool) -> torch.Tensor:
    z = model(x).float()
    return 0.5 * (z + model(x.flip(3)).float()) if flip else z


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct top-1 predictions, exact (count / total in Python floats: 9,000 of 10,000 is 0.9, not
    float32's 0.8999999762)."""
    return int((logits.argmax(1) == labels).sum()) / labels.numel() if labels.numel() else float("nan")


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts; row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)


ECE_BINS = 15  # Guo et al. (2017) and most papers since: 15 equal-width confidence bins


def calibration(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """How far the confidence (top softmax probability) is from the accuracy: the expected calibration error
    ECE = Σ_b n_b/N · |accuracy_b − confidence_b| over `bins` equal-width confidence bins (lo, hi] (Guo et al.,
    2017), the negative log-likelihood (mean cross-entropy in nats) and, for a reliability diagram, each bin's
    count, accuracy and mean confidence (None where a bin is empty). NaN without images."""
    if labels.numel() == 0:
        return {"ece": float("nan"), "nll": float("nan"), "bins": bins, "reliability": []}
    logits = logits.float()
    conf, pred = logits.softmax(1).max(1)
    correct = (pred == labels).double()
    idx = torch.bucketize(conf.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    count = torch.bincount(idx, minlength=bins).double()
    hits = torch.bincount(idx, weights=correct, minlength=bins)
    confs = torch.bincount(idx, weights=conf.double(), minlength=bins)
    rows = [{"lo": i / bins, "hi": (i + 1) / bins, "count": int(count[i]),
             "accuracy": float(hits[i] / count[i]) if count[i] else None,
             "confidence": float(confs[i] / count[i]) if count[i] else None} for i in range(bins)]
    return {"ece": float((hits - confs).abs().sum() / labels.numel()),
            "nll": float(F.cross_entropy(logits, labels)), "bins": bins, "reliability": rows}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al., 2017): the T > 0 that minimises the NLL of softmax(logits / T) on held-out
    labelled images, found by L-BFGS on log T (as their reference code). Dividing by T leaves every prediction as it
    is and only changes how sure the model says it is."""
    if labels.numel() == 0:
        raise FewLabelsError("temperature scaling needs labelled validation images, and there are none")
    logits = logits.detach().float().clone()  # a normal tensor: predict_logits returns inference-mode ones
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):  # pragma: no cover - L-BFGS on a convex 1-D problem; kept as a guard
        raise FewLabelsError("temperature scaling did not converge on these validation images")
    return t


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Accuracy, per-class accuracy, the confusion matrix and, for imbalanced classes, per-class precision, recall,
    F1 and support with their macro-F1 and balanced accuracy, all from the confusion matrix (float64 counts: exact).

    As scikit-learn with zero_division=0, a class never predicted has precision 0.0 (not NaN) and a class with no
    images recall 0.0. `macro_f1` is the unweighted mean F1 over the classes that occur in the labels or the
    predictions (scikit-learn's f1_score(average="macro") without `labels=`: a class absent from both says nothing
    about the model). `balanced_accuracy` is the mean recall over the classes that have images
    (balanced_accuracy_score): on a 9:1 set, always predicting the large class scores accuracy 0.9 but 0.5 here.
    Both are NaN without images (JSON null). `ece`, `nll` and `reliability`: see calibration().
    """
    pred = logits.argmax(1)
    cm = confusion_matrix(pred, labels, len(classes))
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1).float()).tolist()
    c = cm.double()
    tp, support, predicted = c.diag(), c.sum(1), c.sum(0)
    precision = tp / predicted.clamp(min=1)  # 0 where never predicted: tp is 0 there too
    recall = tp / support.clamp(min=1)
    f1 = 2 * tp / (support + predicted).clamp(min=1)  # = 2PR/(P+R), and 0 where P+R = 0, as scikit-learn
    seen, has_support = (support + predicted) > 0, support > 0
    macro_f1 = float(f1[seen].mean()) if bool(seen.any()) else float("nan")
    balanced = float(recall[has_support].mean()) if bool(has_support.any()) else float("nan")
    return {"accuracy": accuracy(logits, labels), "n": int(labels.numel()),
            "per_class_accuracy": dict(zip(classes, per_class)), "confusion_matrix": cm.tolist(), "classes": classes,
            "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                 "support": int(support[i])} for i, name in enumerate(classes)},
            "macro_f1": macro_f1, "balanced_accuracy": balanced, **calibration(logits, labels)}


def final_report(model: nn.Module, sets: dict[str, ImageSet], norm: tuple[Sequence[float], Sequence[float]], *,
                 device: torch.device | None = None, batch_size: int = EVAL_BATCH_SIZE, precision: str = "auto",
                 tta_flip: bool = False, tta_translate: int = 0, channels_last: bool = True,
                 temperature: float = 1.0) -> dict | None:
    """The classification report of a run's final model on its test images, else its validation images: {"on":
    "test" | "val", **classification_report(...)}, plain JSON types; None when `sets` (name → ImageSet, as fit's
    evals) has neither. Evaluate as the run evaluated (its precision, TTA and memory format) and the report's
    accuracy is the run's own test_acc / val_acc of that model to the image. `temperature`: the model's calibration
    (logits / T; the accuracy is the same, the ECE and NLL are those of the calibrated probabilities).
    """
    name = "test" if "test" in sets else "val" if "val" in sets else None
    if name is None:
        return None
    s = sets[name]
    device = device or next(model.parameters()).device
    logits = predict_logits(model, s.images, *norm, batch_size=batch_size, device=device,
                            dtype=pick_dtype(precision, device), tta_flip=tta_flip, tta_translate=tta_translate,
                            channels_last=channels_last)
    return {"on": name, "temperature": temperature,
            **classification_report(logits / temperature, s.labels, list(s.classes))}

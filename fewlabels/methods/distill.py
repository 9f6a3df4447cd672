"""`fewlabels distill`: knowledge distillation from a trained teacher into a (smaller) student.

Loss (Hinton et al. 2015), with α weighting the distillation term:

    L = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)

KL uses batchmean reduction, both terms are computed in fp32 under autocast. Conventions differ: Hinton's paper and
RepDistiller weight the KD term by α as here; some code weights CE by α instead. α = 1 is pure distillation.

The teacher is frozen (eval mode, no gradients, outside the optimizer and any DDP wrapper) and sees the same
augmented — and CutMix/MixUp-mixed — batch as the student. Unlabelled images may join: on them only the distillation
term applies. With `--cache-teacher` the teacher's logits are computed once on the clean, un-augmented images; this
is faster, but under augmentation those targets are stale (they describe an image the student does not see).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Options, group, opt
from ..console import Console
from ..data.prepare import Budget, Pool, Source, eval_sets, overlap_note, prepare_data
from ..engine.checkpoint import load_model
from ..engine.config import TRAINING
from ..engine.loop import TrainSet, Watch, fit
from ..errors import FewLabelsError
from ..eval import accuracy, predict_logits
from ..losses import kd_loss, soft_cross_entropy
from ..runs import run_folder, save_config, source_split
from ..targets import Batch, one_hot
from ..utils import autocast, pick_device, pick_dtype, synchronize, to_device, write_json
from .common import (
    Calibration,
    Model,
    Run,
    Teacher,
    Temperature,
    build_model,
    check_classes,
    report_run,
    scored,
    train_config,
    with_report,
)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                 has_label: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    """α·T²·KL(teacher‖student) over every image + (1 − α)·CE over the images that have a label.

    The CE term is averaged over labelled images only, so unlabelled images contribute the KD term alone."""
    loss = alpha * kd_loss(student_logits, teacher_logits, temperature)
    if alpha < 1 and bool(has_label.any()):
        loss = loss + (1 - alpha) * soft_cross_entropy(student_logits[has_label], target[has_label])
    return loss


class DistillLoss:
    """The fit() loss object: runs the frozen teacher on the student's batch, or reads the batch's teacher_logits
    (cached once on clean images, mixed along with the images under MixUp/CutMix) when there is no teacher."""

    def __init__(self, teacher: nn.Module | None, alpha: float, temperature: float,
                 renorm: tuple[torch.Tensor, torch.Tensor] | None = None):
        """renorm: per-channel (scale, shift) taking the student's normalised batch to the teacher's
        normalisation, when they were trained with different statistics."""
        self.teacher, self.alpha, self.t, self.renorm = teacher, alpha, temperature, renorm
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def __call__(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        y = batch.targets
        # Under MixUp/CutMix with unlabelled images, a labelled image mixed with an unlabelled one keeps only part of
        # its label mass: only whole labels enter the cross-entropy (the distillation term covers every image).
        has_label = batch.has_label & (y.sum(1) > 1 - 1e-3)
        if self.teacher is None:
            t_logits = batch.teacher_logits
        else:
            xt = x
            if self.renorm is not None:
                scale, shift = (to_device(v, x.device, x.dtype).view(1, -1, 1, 1) for v in self.renorm)
                xt = x * scale + shift
            with torch.no_grad():
                t_logits = self.teacher(xt).float()
        return distill_loss(model(x), t_logits, y, has_label, alpha=self.alpha, temperature=self.t)


@group
class Distill:
    """How the student learns from the teacher."""

    alpha: float = opt(0.9, "weight α of the distillation term: L = α·T²·KL + (1−α)·CE", ge=0, le=1)
    use_unlabelled: bool = opt(False, "add the split's unlabelled images (distillation term only); on by itself "
                               "with --unlabelled")
    cache_teacher: bool = opt(False, "compute teacher logits once on clean images (faster; stale under augmentation)")


class DistillCommand(Options):
    """Train a student on a frozen teacher's temperature-softened outputs plus the true labels."""

    groups = (Run, Teacher, Distill, Temperature, Source, Budget, Pool, Model, *TRAINING, Calibration)
    hide = ("overwrite", "unlabelled_ratio")  # no pseudo-labelled images to mix in
    defaults = {"temperature": 4.0}


def distill(cfg: DistillCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train a student on a frozen teacher's softened outputs plus the true labels; returns {"run_dir",
    "train_minutes", the final metrics, "compression" (teacher vs student size, speed, accuracy)}. E.g.
    `distill(teacher="runs/big", model="cnn-tiny", data="digits", labels_per_class=20, alpha=0.9, temperature=4)`."""
    cfg = DistillCommand.build(cfg, kwargs)
    if not cfg.teacher:
        raise FewLabelsError("distill needs --teacher RUN_FOLDER (a trained fewlabels model)")
    log = Console.of(cfg)
    device = pick_device(cfg.device)
    teacher, tmeta = load_model(cfg.teacher, device)
    run_dir = run_folder(cfg.out, "distill")
    cfg = save_config(run_dir, cfg, "distill")
    ds, split = prepare_data(cfg, run_dir, log, source=source_split(cfg.teacher), source_name=cfg.teacher)
    check_classes(tmeta, ds.train.classes, f"the teacher {cfg.teacher}", ds.train)
    k = ds.train.num_classes
    idx = torch.cat([split.labelled, split.unlabelled]) if cfg.use_unlabelled or cfg.unlabelled else split.labelled
    sub = ds.train.subset(idx)
    has_label = torch.zeros(len(sub), dtype=torch.bool)
    has_label[: len(split.labelled)] = True
    targets = torch.zeros(len(sub), k)
    targets[has_label] = one_hot(sub.labels[has_label], k, cfg.label_smoothing)
    cached = None
    if cfg.cache_teacher:
        cached = predict_logits(teacher, sub.images, tmeta["mean"], tmeta["std"], device=device,
                                dtype=pick_dtype(cfg.precision, device))
        teacher_for_loss = None
    else:
        teacher_for_loss = teacher.to(memory_format=torch.channels_last) if cfg.channels_last else teacher
    renorm = None
    if list(tmeta["mean"]) != list(ds.mean) or list(tmeta["std"]) != list(ds.std):
        # (x_s·σ_s + μ_s − μ_t) / σ_t: the teacher sees each batch as it saw its training images
        ms, ss, mt, st = (torch.tensor(v, dtype=torch.float32)
                          for v in (ds.mean, ds.std, tmeta["mean"], tmeta["std"]))
        renorm = (ss / st, (ms - mt) / st)
    student, meta = build_model(cfg.group(Model), ds, log, cfg.seed)
    loss = DistillLoss(teacher_for_loss, cfg.alpha, cfg.temperature, renorm)
    t0 = time.perf_counter()
    res = fit(student, TrainSet(sub.images, targets, has_label, teacher_logits=cached, norm=(ds.mean, ds.std)),
              train_config(cfg, ds), loss, Watch(eval_sets(ds, split), run_dir, {**meta, "teacher": cfg.teacher}, log))
    out = {"run_dir": str(run_dir), "train_minutes": (time.perf_counter() - t0) / 60,
           **res.final, **overlap_note(ds)}
    with_report(out, res.best_model(), eval_sets(ds, split), (ds.mean, ds.std), train_config(cfg, ds),
                run_dir / "checkpoints" / "best" if cfg.calibrate else None, log)
    if ds.test is not None:
        out["compression"] = compression_report({"teacher": (teacher, tmeta), "student": (res.model, meta)},
                                                ds.test, device)
    write_json(run_dir / "results.json", out)
    report_run(run_dir, log, ds, split)
    log(f"done: {run_dir}  student {scored(out)}")
    return out


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    x = torch.zeros((1, *shape), device=p.device)
    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    model.train(was)
    return int(fc.get_total_flops())


def latency_ms(model: nn.Module, shape: tuple[int, ...], batch: int, device: torch.device, repeats: int = 5) -> float:
    """Median milliseconds per image for a no-grad forward pass at `batch`, bf16 autocast where available."""
    dtype = pick_dtype("auto", device)
    x = torch.randn((batch, *shape), device=device).contiguous(memory_format=torch.channels_last)
    model.eval()
    times = []
    with torch.inference_mode(), autocast(device, dtype):
        model(x)
        for _ in range(repeats):
            synchronize(device)
            t = time.perf_counter()
            model(x)
            synchronize(device)
            times.append((time.perf_counter() - t) * 1000 / batch)
    return sorted(times)[len(times) // 2]


def compression_report(models: dict[str, tuple[nn.Module, dict]], test, device: torch.device) -> dict[str, Any]:
    """Parameters, FLOPs per image, CPU/GPU latency per image at batch 1 and 256, and test accuracy."""
    out = {}
    shape = tuple(test.images.shape[1:])
    for name, (m, meta) in models.items():
        m = m.to(device).to(memory_format=torch.channels_last)
        logits = predict_logits(m, test.images, meta["mean"], meta["std"], device=device,
                                dtype=pick_dtype("auto", device))
        out[name] = {"model": meta["model"], "params": sum(p.numel() for p in m.parameters()),
                     "flops_per_image": count_flops(m, shape),
                     "latency_ms_batch1": latency_ms(m, shape, 1, device, repeats=20),
                     "latency_ms_per_image_batch256": latency_ms(m, shape, 256, device),
                     "test_accuracy": accuracy(logits, test.labels)}
    return out


__all__ = ["DistillCommand", "DistillLoss", "compression_report", "distill", "distill_loss", "Path"]

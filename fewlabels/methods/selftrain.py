"""`fewlabels selftrain`: Noisy Student self-training (Xie et al. 2020, "Self-training with Noisy Student improves
ImageNet classification").

Round 0 trains the teacher on the labelled images alone (this is also the supervised-only baseline). Each round r ≥ 1
pseudo-labels the unlabelled pool with the current teacher on clean images, then trains an equal-or-larger student
from the model schedule on labelled + pseudo-labelled images, noised by the `strong` augmentation (RandAugment +
Cutout), dropout and stochastic depth; the student becomes the next teacher. Each round lives in its own folder
(`round0/`, `round1/`, ...) with its checkpoints, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from .. import targets as T
from .. import tensorboard_events as tb
from ..config import Options, group, opt
from ..console import Console
from ..data.imageset import gather
from ..data.prepare import EMPTY_POOL, Budget, Pool, Source, eval_sets, overlap_note, prepare_data
from ..engine.budget import TimeBudget, images_per_epoch, pace, phase, replan
from ..engine.budget import plan as plan_budget
from ..engine.checkpoint import copy_checkpoint, find_checkpoint, load_model, read_meta
from ..engine.config import TRAINING, TrainConfig
from ..engine.loop import TrainSet, Watch, fit
from ..errors import FewLabelsError
from ..eval import accuracy, predict_logits
from ..losses import SelfCorrecting
from ..runs import run_folder, save_config, source_split
from ..utils import atomic_write_text, pick_device, pick_dtype, write_json
from .common import (
    Calibration,
    Model,
    Run,
    Teacher,
    Temperature,
    budgeted,
    build_model,
    calibrate_checkpoint,
    check_classes,
    flags,
    labelled_trainset,
    report_run,
    train_config,
    with_report,
)
from .pseudolabel import POOL_LOGITS, PseudoLabel, check_label_options, labelled_prior, quality, teach
from .transfer import LayerRates, lr_scales


@group
class Rounds:
    """The teacher, the students and how each round trains."""

    rounds: int = opt(2, "student rounds after the teacher (round 0)", ge=0, resume="extend")
    teacher_model: str = opt("cnn-s", "round-0 teacher model")
    student_models: list[str] = opt(["cnn-s", "cnn-m"], "student model per round, comma-separated; the last one "
                                    "repeats. Use equal or larger models")
    teacher_epochs: int = opt(40, "epochs of the round-0 teacher", ge=1)
    student_epochs: int = opt(20, "epochs of each student", ge=1)
    teacher_augment: str = opt("weak", "augmentation of the teacher", choices=("none", "weak", "strong"))
    student_augment: str = opt("strong", "input noise of the students", choices=("none", "weak", "strong"))
    student_drop_rate: float = opt(0.3, "model noise: dropout before the students' classifier", ge=0, lt=1)
    student_drop_path_rate: float = opt(0.1, "model noise: stochastic depth of the students", ge=0, lt=1)
    finetune_epochs: int = opt(0, "a final fine-tune of the last student on the labelled images (0 = none)", ge=0,
                               resume="extend")
    teacher_pretrained: str | None = opt(None, "start the round-0 teacher from these weights: a weights file, a "
                                         "fewlabels run folder (its model, unless --teacher-model is given) or "
                                         "'true' for the model's own (timm:<name>); new head for your classes")
    student_pretrained: str | None = opt(None, "start each student from these weights (as --teacher-pretrained) "
                                         "instead of from scratch; 'previous': each student after the first "
                                         "continues from the one before it, at the full learning rate, on the "
                                         "pool that one re-labelled")
    confidence_power: float = opt(0.0, "weight each pseudo-label's loss by the teacher's confidence to this power, "
                                  "so doubtful labels count less (0 = all count fully)", ge=0)
    label_correction: float = opt(0.0, "the students correct the teacher's pseudo-labels as they train (SELC, Lu & "
                                  "He 2022), at no extra cost: each time a pseudo-labelled image is trained on, its "
                                  "target becomes M x target + (1 - M) x the student's prediction; 0 = off, e.g. 0.9",
                                  ge=0, lt=1)
    label_correction_start: float = opt(0.5, "with --label-correction: the share of each student's epochs trained on "
                                        "the teacher's labels as they are before correcting starts", ge=0, lt=1)
    label_correction_targets: str = opt("soft", "with --label-correction: what the student trains on, the corrected "
                                        "targets as they are (soft) or their top class (hard: a pseudo-label "
                                        "changes class once the student's predictions outweigh it, and stays crisp)",
                                        choices=("soft", "hard"))


class SelfTrainCommand(Options):
    """Noisy Student self-training: teacher → pseudo-labels → noised, equal-or-larger student → repeat."""

    groups = (Run, Teacher, Rounds, LayerRates, PseudoLabel, Temperature, Source, Budget, Pool, *TRAINING, TimeBudget,
              Calibration)
    hide = ("overwrite", "epochs", "augment")  # set per round: --teacher-epochs/--student-epochs and their augments


def _student_trainset(labelled: TrainSet, pool_images: torch.Tensor, pl_targets: torch.Tensor,
                      pl_indices: torch.Tensor, smoothing: float = 0.0, confidence: torch.Tensor | None = None,
                      power: float = 0.0) -> TrainSet:
    """Labelled + pseudo-labelled images; the pseudo-labels smoothed by ε as the labelled targets already are, and
    with power > 0 weighted by the teacher's confidence^power (targets.weighted: doubtful labels pull less; the
    loss stays a mean over the batch, labelled images keep full weight)."""
    n_lab, n_ps = labelled.images.shape[0], pl_indices.numel()
    pl_targets = T.weighted(T.smooth(pl_targets, smoothing), confidence, power)
    return TrainSet(gather([(labelled.images, None), (pool_images, pl_indices)]),  # large: memory-mapped scratch
                    torch.cat([labelled.targets, pl_targets]),
                    torch.ones(n_lab + n_ps, dtype=torch.bool),
                    torch.cat([torch.zeros(n_lab, dtype=torch.bool), torch.ones(n_ps, dtype=torch.bool)]),
                    norm=labelled.norm)


def selftrain(cfg: SelfTrainCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run Noisy Student rounds; returns the per-round table (also RUN/rounds.json, RUN/rounds.md, RUN/rounds.png) and
    which round was handed over as RUN/checkpoints/best (`final_round`, also RUN/final.json)."""
    cfg = SelfTrainCommand.build(cfg, kwargs)
    check_label_options(cfg, (("label_correction_targets", "label_correction", cfg.label_correction > 0),))
    unused = cfg.set_by_user(["teacher_pretrained", "teacher_epochs", "teacher_model"], recipe=False)
    if cfg.teacher and unused:
        raise FewLabelsError(f"--teacher {cfg.teacher} is round 0 as it is, so {flags(unused)} would not be used: "
                             "drop them, or drop --teacher to train a teacher")
    if cfg.teacher:
        find_checkpoint(cfg.teacher)  # a clear error before any work
    if cfg.label_correction > 0 and (cfg.mixup > 0 or cfg.cutmix > 0):
        raise FewLabelsError("--label-correction corrects each image's own target, which MixUp/CutMix mixes with "
                             "another's: drop --mixup/--cutmix, or --label-correction")
    if cfg.label_correction > 0 and distributed.active():
        raise FewLabelsError("--label-correction keeps its corrected targets in one process: run it without "
                             "torchrun, or drop --label-correction")
    if cfg.student_pretrained == PREVIOUS and len(set(cfg.student_models[:max(cfg.rounds, 1)])) > 1:
        raise FewLabelsError(f"--student-pretrained {PREVIOUS} continues each student from the one before it, so "
                             f"the students must be one model, not {','.join(cfg.student_models[:cfg.rounds])}: "
                             "give one --student-models")
    log = Console.of(cfg)
    teacher_model = _model_of(cfg.teacher_pretrained, cfg.teacher_model, "teacher_model" in cfg.set_by_user(
        ["teacher_model"]))
    run_dir = run_folder(cfg.out, "selftrain")
    cfg = save_config(run_dir, cfg, "selftrain")
    start = cfg.teacher or cfg.teacher_pretrained
    ds, split = prepare_data(cfg, run_dir, log, source=source_split(start), source_name=start or "")
    if cfg.rounds > 0 and len(split.unlabelled) == 0:
        raise FewLabelsError(EMPTY_POOL)
    device = pick_device(cfg.device)
    labelled = labelled_trainset(ds, split, cfg.label_smoothing)
    pool = ds.train.subset(split.unlabelled)
    evals = eval_sets(ds, split)
    base = train_config(cfg, ds)
    rows: list[dict[str, Any]] = []
    budget = None
    if cfg.budget_minutes:
        budget = budgeted(run_dir, lambda: _plan_budget(cfg, ds, labelled, pool, evals, base, teacher_model), log)
        e = budget["epochs"]  # as re-planned so far, when a run is resumed (_replan)
        cfg = cfg.replace(teacher_epochs=e.get("teacher", cfg.teacher_epochs),
                          student_epochs=e.get("student1", cfg.student_epochs),
                          finetune_epochs=e.get("finetune", cfg.finetune_epochs))
    t_start = time.perf_counter()

    def run_round(r: int, model_name: str, train: TrainSet, tcfg: TrainConfig, drop: float, dpr: float,
                  extra: dict[str, Any], pretrained: str | None = None, continued: bool = False,
                  loss: SelfCorrecting | None = None, true_labels: torch.Tensor | None = None) -> dict[str, Any]:
        rdir = run_dir / f"round{r}"
        done = rdir / "results.json"
        if done.is_file():
            row = json.loads(done.read_text())
            log(f"round {r}: already done ({model_name}), skipping")
            return row
        clock = _Clock(rdir / ".elapsed")  # every attempt's time: an interrupted round is resumed, not restarted
        model, meta = build_model(Model(model_name, drop, dpr, pretrained), ds, log, cfg.seed + r)
        log(f"round {r}: {model_name} on {train.images.shape[0]} images ({extra.get('pseudo_labels', 0)} pseudo)"
            + (f", from {pretrained}" if pretrained else ""))
        # weights from elsewhere are fine-tuned (a lower backbone rate); a student continued from the one before it
        # trains on as it did, unless --backbone-lr/--layer-decay say otherwise
        scales = (lr_scales(model, tcfg.lr, cfg.backbone_lr, cfg.layer_decay) if pretrained and not (
            continued and cfg.backbone_lr is None and cfg.layer_decay is None) else None)
        first = round(cfg.label_correction_start * tcfg.epochs)

        def epoch_start(_model, epoch: int) -> None:
            clock.save()
            if loss is not None:
                loss.start(epoch >= first)

        res = fit(model, train, tcfg, loss, watch=Watch(evals, rdir, meta, log), lr_scale=scales,
                  on_epoch_start=epoch_start)
        last = res.final  # the checkpoint the next round loads
        if loss is not None:
            extra = {**extra, **_corrected(loss, train, true_labels)}
        if cfg.calibrate:  # the next round's teacher labels the pool with calibrated probabilities
            extra = {**extra, "temperature": calibrate_checkpoint(rdir / "checkpoints" / "best", res.best_model(),
                                                                  evals, (ds.mean, ds.std), tcfg, log)["temperature"]}
        row = {"round": r, "model": model_name, "val_acc": last.get("val_acc"), "test_acc": last.get("test_acc"),
               "train_images": int(train.images.shape[0]), "minutes": round(clock.save() / 60, 3),
               **extra, **({"pretrained": pretrained} if pretrained else {})}
        write_json(done, row)
        return row

    # round 0: the teacher on the labelled images alone = the supervised-only baseline
    tcfg = base.replace(epochs=cfg.teacher_epochs, augment=cfg.teacher_augment)
    if cfg.teacher:
        rows.append(_adopt_teacher(cfg.teacher, ds, evals, run_dir / "round0", device, log))
    else:
        rows.append(run_round(0, teacher_model, labelled, tcfg, 0.0, 0.0, {"pseudo_labels": 0},
                              cfg.teacher_pretrained))
    if cfg.tensorboard:
        tb.log_round(run_dir, rows[0])
    models = cfg.student_models or [rows[0]["model"]]
    student_given = "student_models" in cfg.set_by_user(["student_models"])
    for r in range(1, cfg.rounds + 1):
        rdir = run_dir / f"round{r}"
        start = _student_start(cfg.student_pretrained, run_dir, r)
        name = _model_of(start, models[min(r - 1, len(models) - 1)], student_given)
        if (rdir / "results.json").is_file():  # finished before an interruption: no need to label the pool again
            rows.append(run_round(r, name, labelled, base, 0.0, 0.0, {}))
            continue
        teacher, tmeta = load_model(run_dir / f"round{r - 1}", device)
        t0 = time.perf_counter()
        pl = teach(teacher, tmeta, pool, cfg, device, labelled_prior(ds.train, split), rdir / POOL_LOGITS)
        label_s = time.perf_counter() - t0
        if len(pl) == 0:
            reuse = (f"; copy {run_dir / 'round0'} and {run_dir / 'split.json'} into the new one to reuse the "
                     "finished rounds" if r == 1 else "")
            raise FewLabelsError(f"round {r}: no pseudo-label passed --threshold {cfg.threshold}; lower it, with a "
                                 f"new --out (this folder keeps its options{reuse})")
        q = quality(pl, pool.labels, ds.train.classes) if bool((pool.labels >= 0).all()) else {}
        pl.save(rdir, pool.paths, ds.train.classes, split.unlabelled)
        shutil.rmtree(rdir / POOL_LOGITS, ignore_errors=True)
        write_json(rdir / "pseudo_labels_report.json", q)
        del teacher
        train = _student_trainset(labelled, pool.images, pl.probs, pl.indices, cfg.label_smoothing, pl.confidence,
                                  cfg.confidence_power)
        scfg = base.replace(epochs=cfg.student_epochs, augment=cfg.student_augment)
        if budget is not None:
            budget = _replan(run_dir, budget, r, cfg.rounds, images_per_epoch(train, scfg), rows, label_s, log)
            cfg = cfg.replace(student_epochs=budget["epochs"].get(f"student{r}", cfg.student_epochs),
                              finetune_epochs=budget["epochs"].get("finetune", cfg.finetune_epochs))
            scfg = scfg.replace(epochs=cfg.student_epochs)
        correcting = (SelfCorrecting(train.targets.to(device), train.pseudo, cfg.label_correction,
                                     hard=cfg.label_correction_targets == "hard")
                      if cfg.label_correction > 0 else None)
        rows.append(run_round(r, name, train, scfg, cfg.student_drop_rate, cfg.student_drop_path_rate,
                              {"pseudo_labels": len(pl), "pl_precision": q.get("precision"),
                               "pl_coverage": q.get("coverage"), "label_seconds": round(label_s, 2)},
                              start, continued=cfg.student_pretrained == PREVIOUS, loss=correcting,
                              true_labels=pool.labels[pl.indices]))
        if cfg.tensorboard:
            tb.log_round(run_dir, rows[-1], tb.pseudo_label_grid(pool.images[pl.indices], pl.labels, pl.confidence,
                                                                 len(ds.train.classes)))
    final_dir = run_dir / f"round{cfg.rounds}"
    if cfg.finetune_epochs > 0:
        rows.append(_finetune(cfg, ds, split, labelled, evals, run_dir, final_dir, base, log))
        final_dir = run_dir / "finetune"
    chosen = _finish(run_dir, final_dir, rows, log, len(evals["val"]) if "val" in evals else 0)
    final, fmeta = load_model(run_dir / "checkpoints" / "best", device)
    summary = with_report({**json.loads((run_dir / "final.json").read_text()), **overlap_note(ds)}, final, evals,
                          (fmeta["mean"], fmeta["std"]), base, temperature=fmeta.get("temperature", 1.0))
    if budget is not None:  # the minutes of this attempt (a resumed run's earlier ones are in rounds.json)
        summary["budget"] = {**budget, "minutes": round((time.perf_counter() - t_start) / 60, 2)}
    write_json(run_dir / "final.json", summary)  # the final model's per-class report too
    report_run(run_dir, log, ds, split)
    return {"run_dir": str(run_dir), "rounds": rows, "supervised_only": rows[0].get("test_acc"),
            "final_round": rows[chosen]["round"], "final_test_acc": rows[chosen].get("test_acc"),
            **{k: summary[k] for k in ("macro_f1", "balanced_accuracy", "report") if k in summary}}


def _corrected(loss: SelfCorrecting, train: TrainSet, true: torch.Tensor | None) -> dict[str, Any]:
    """What --label-correction did to the pseudo-labels: how many changed class, and their precision after it where
    the pool's true labels are known (the rows' order is the pseudo-labels')."""
    rows = train.pseudo.nonzero().squeeze(1)
    before = train.targets[rows].argmax(1)
    after = loss.table[rows.to(loss.table.device)].argmax(1).cpu()
    out = {"corrected_labels": int((before != after).sum())}
    if true is not None and bool((true >= 0).all()) and true.numel() == after.numel():
        out["corrected_precision"] = round(float((after == true).float().mean()), 4)
    return out


def _plan_budget(cfg: SelfTrainCommand, ds, labelled: TrainSet, pool, evals, base: TrainConfig,
                 teacher_model: str) -> dict[str, Any]:
    """--budget-minutes for self-training: the teacher, each student and the fine-tune timed on this machine
    (engine.budget), with the pool labelled after every round but the last."""
    quiet = Console(quiet=True)
    tta = (cfg.tta_flip_teacher, cfg.tta_translate_teacher)
    phases = []
    if cfg.teacher:  # adopted: no training, only its labelling of the pool
        tmodel, _ = load_model(cfg.teacher, "cpu")
        p = phase("teacher", tmodel, labelled, base.replace(epochs=1), {}, pool=pool.images, tta=tta)
        phases.append(replace(p, train_images_per_epoch=0, labels_after=len(pool) if cfg.rounds else 0))
    else:
        model, _ = build_model(Model(teacher_model, 0.0, 0.0, cfg.teacher_pretrained), ds, quiet, cfg.seed)
        p = phase("teacher", model, labelled, base.replace(epochs=cfg.teacher_epochs, augment=cfg.teacher_augment),
                  evals, pool=pool.images, tta=tta)
        phases.append(replace(p, labels_after=len(pool) if cfg.rounds else 0))
    scfg = base.replace(epochs=cfg.student_epochs, augment=cfg.student_augment)
    k = ds.train.num_classes
    n_lab, n_pool = labelled.images.shape[0], len(pool)
    sample = torch.arange(min(n_pool, 8 * base.batch_size))
    probe_set = _student_trainset(labelled, pool.images, torch.full((len(sample), k), 1.0 / k), sample,
                                  cfg.label_smoothing)
    counts = TrainSet(torch.zeros((n_lab + n_pool, 1, 1, 1), dtype=torch.uint8), torch.zeros((n_lab + n_pool, k)),
                      torch.ones(n_lab + n_pool, dtype=torch.bool),
                      torch.cat([torch.zeros(n_lab, dtype=torch.bool), torch.ones(n_pool, dtype=torch.bool)]),
                      norm=labelled.norm)
    per_epoch = images_per_epoch(counts, scfg)  # every pool image pseudo-labelled: the most a round can take
    models = cfg.student_models or [teacher_model]
    given = "student_models" in cfg.set_by_user(["student_models"])
    timed: dict[str, Any] = {}
    last = teacher_model
    weights = None if cfg.student_pretrained == PREVIOUS else cfg.student_pretrained  # the same speed
    for r in range(1, cfg.rounds + 1):
        last = _model_of(weights, models[min(r - 1, len(models) - 1)], given)
        if last not in timed:
            model, _ = build_model(Model(last, cfg.student_drop_rate, cfg.student_drop_path_rate, weights), ds, quiet,
                                   cfg.seed)
            timed[last] = phase("student", model, probe_set, scfg, evals, per_epoch=per_epoch, pool=pool.images,
                                tta=tta)
        phases.append(replace(timed[last], name=f"student{r}", labels_after=n_pool if r < cfg.rounds else 0))
    if cfg.finetune_epochs > 0:
        model, _ = build_model(Model(last, 0.0, 0.0, None), ds, quiet, cfg.seed)
        phases.append(phase("finetune", model, labelled, _finetune_config(cfg, base), evals))
    return plan_budget(phases, cfg.budget_minutes)


def _replan(run_dir: Path, budget: dict[str, Any], r: int, rounds: int, per_epoch: int, rows: list[dict[str, Any]],
            label_s: float, log) -> dict[str, Any]:
    """--budget-minutes once round r's pseudo-labels are known: the plan sized each student for every pool image
    (it cannot know how many pass the threshold) and assumed the speeds it measured; the students and the
    fine-tune left are re-planned (engine.budget.replan) to the minutes left after the rounds so far, with this
    round's real epoch and the speeds corrected by how the rounds so far kept to their prediction (pace). Saved in
    RUN/budget.json ("epochs" as re-planned, each re-plan in "replans"), so a resumed run trains the epochs it
    planned."""
    done = {p["round"] for p in budget.get("replans", [])}
    if r in done:
        return budget
    spent = sum(row.get("minutes") or 0.0 for row in rows) + (sum(row.get("label_seconds") or 0.0 for row in rows)
                                                               + label_s) / 60
    left = budget["budget_minutes"] - spent
    names = [n for n in [f"student{q}" for q in range(r, rounds + 1)] + ["finetune"] if n in budget["epochs"]]
    known = {f"student{p['round']}": p["student_images_per_epoch"] for p in budget.get("replans", [])}
    slowdown = pace(budget, {("teacher" if row["round"] == 0 else f"student{row['round']}"): 60 * row["minutes"]
                             for row in rows if row.get("minutes")}, known)
    # under torchrun every rank trains rank 0's epochs (their clocks differ by a little)
    new = distributed.broadcast_object(replan(budget, names, left, {f"student{q}": per_epoch
                                                                     for q in range(r, rounds + 1)}, slowdown))
    if new is None:  # a plan saved by an earlier version: kept as it is
        return budget
    budget = {**budget, "epochs": {**budget["epochs"], **new["epochs"]},
              "replans": [*budget.get("replans", []), {"round": r, "minutes_left": round(left, 2),
                                                        "pace": round(slowdown, 3),
                                                        "student_images_per_epoch": per_epoch,
                                                        "before": {n: budget["epochs"][n] for n in names},
                                                        "epochs": new["epochs"],
                                                        "predicted_minutes": new["predicted_minutes"]}]}
    write_json(run_dir / "budget.json", budget)
    log(f"budget: round {r} trains on {per_epoch} images an epoch with {left:.1f} of {budget['budget_minutes']:g} "
        "minutes left → " + ", ".join(f"{n} {new['epochs'][n]}" for n in names)
        + f" (predicted {new['predicted_minutes']:.1f} min at {slowdown:.2f}x the times measured at the start)")
    return budget


PREVIOUS = "previous"  # --student-pretrained previous


def _student_start(weights: str | None, run_dir: Path, r: int) -> str | None:
    """The weights student r starts from: --student-pretrained, or with 'previous' round r-1's student (the first
    student from scratch)."""
    if weights != PREVIOUS:
        return weights
    return str(run_dir / f"round{r - 1}") if r > 1 else None


def _model_of(weights: str | None, name: str, given: bool) -> str:
    """The model to build for pretrained weights: a fewlabels checkpoint says which model it holds, and that one is
    used unless the user named one."""
    if not weights or given or not Path(weights).exists():
        return name
    try:
        return str(read_meta(weights)["model"])
    except (FewLabelsError, KeyError):
        return name  # a plain weights file: the model the options name


def _adopt_teacher(source: str, ds, evals, rdir: Path, device, log) -> dict[str, Any]:
    """Round 0 = an existing run's model, not retrained: its checkpoint is copied into round0/ and scored on this
    run's validation and test images (with its own normalisation), so the round table starts from it."""
    done = rdir / "results.json"
    if done.is_file():
        log("round 0: already done (the given teacher), skipping")
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    folder = find_checkpoint(source)
    model, meta = load_model(folder, device)
    check_classes(meta, ds.train.classes, f"the teacher {source}", ds.train)
    row: dict[str, Any] = {"round": 0, "model": meta["model"], "teacher": str(source)}
    for name, images in evals.items():
        logits = predict_logits(model, images.images, meta["mean"], meta["std"], device=device,
                                dtype=pick_dtype("auto", device))
        row[f"{name}_acc"] = accuracy(logits, images.labels)
    row.update({"val_acc": row.get("val_acc"), "test_acc": row.get("test_acc"), "train_images": 0,
                "minutes": round((time.perf_counter() - t0) / 60, 3), "pseudo_labels": 0})
    copy_checkpoint(folder, rdir / "checkpoints" / "best")
    write_json(done, row)
    log(f"round 0: the teacher {source} ({meta['model']}): " + "  ".join(
        f"{k} {row[k]:.4f}" for k in ("val_acc", "test_acc") if row.get(k) is not None))
    return row


def _finetune_config(cfg: SelfTrainCommand, base: TrainConfig) -> TrainConfig:
    """The final fine-tune's options: the teacher's augmentation, a tenth of the learning rate, no warm-up, and full-
    size images throughout (no --progressive-resize)."""
    return base.replace(epochs=cfg.finetune_epochs, augment=cfg.teacher_augment, lr=base.lr * 0.1, warmup_epochs=0,
                        progressive_resize=None)


def _finetune(cfg, ds, split, labelled, evals, run_dir, src, base, log) -> dict[str, Any]:
    from ..models import load_pretrained
    rdir = run_dir / "finetune"
    want = {"from": src.name, "epochs": cfg.finetune_epochs}
    if rdir.is_dir():  # resume the fine-tune this folder holds, or keep it aside if the run was extended
        have = _read_json(rdir / "source.json")
        if have is None and (rdir / "checkpoints").is_dir():  # written before source.json existed
            have = {"from": src.name, "epochs": read_meta(rdir / "checkpoints" / "last").get(
                "train_config", {}).get("epochs")}
        if have is not None and have != want:
            dst = run_dir / f"finetune-{have.get('from')}-{have.get('epochs')}ep"
            n = 1
            while dst.exists():
                n += 1
                dst = dst.with_name(f"finetune-{have.get('from')}-{have.get('epochs')}ep-{n}")
            rdir.rename(dst)
            log(f"the earlier fine-tune ({have.get('epochs')} epochs from {have.get('from')}) is kept as {dst}")
    rdir.mkdir(parents=True, exist_ok=True)
    write_json(rdir / "source.json", want)
    _, meta = load_model(src)
    model, meta = build_model(Model(meta["model"], 0.0, 0.0, None), ds, log, cfg.seed)
    load_pretrained(model, str(src), strict=True)
    t0 = time.perf_counter()
    fcfg = _finetune_config(cfg, base)
    res = fit(model, labelled, fcfg, watch=Watch(evals, rdir, meta, log))
    last = res.final
    cal = ({"temperature": calibrate_checkpoint(rdir / "checkpoints" / "best", res.best_model(), evals,
                                                (ds.mean, ds.std), fcfg, log)["temperature"]} if cfg.calibrate else {})
    return {"round": "finetune", "model": meta["model"], "val_acc": last.get("val_acc"),
            "test_acc": last.get("test_acc"), "minutes": round((time.perf_counter() - t0) / 60, 3), **cal}


class _Clock:
    """Seconds spent on a round over all its attempts: what earlier attempts recorded in `path` (at every epoch's
    start, so a kill loses at most one epoch of it) plus this attempt's."""

    def __init__(self, path: Path):
        self.path, self.t0 = path, time.perf_counter()
        try:
            self.before = float(path.read_text())
        except (OSError, ValueError):
            self.before = 0.0

    def save(self) -> float:
        total = self.before + time.perf_counter() - self.t0
        with contextlib.suppress(OSError, FewLabelsError):
            atomic_write_text(self.path, f"{total:.3f}\n")
        return total


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pick_final(run_dir: Path, last_dir: Path, rows: list[dict[str, Any]], n_val: int) -> tuple[int, Path]:
    """The row whose model the run hands over as checkpoints/best. As in Noisy Student that is the last student (or
    its fine-tune), unless a validation set shows it clearly worse than an earlier round: below the best validation
    accuracy by more than two binomial standard errors, sqrt(p(1-p)/n) at the best accuracy p, and by more than four
    images (McNemar's test at two standard errors, b - c > 2 sqrt(b + c), needs at least five images of difference
    even when one model is right wherever the two disagree). Then the best round's model: a student that collapsed
    under too much noise or too few epochs is not handed over, while a dip of a few images on a small validation set
    does not undo the last round. Without a validation set (--val 0) the last: choosing on test accuracy would tune
    on the test set."""
    last = len(rows) - 1
    scored = [j for j, r in enumerate(rows) if r.get("val_acc") is not None]  # e.g. a round made by an old version
    if n_val <= 0 or not rows or last not in scored:
        return last, last_dir
    i = max(scored, key=lambda j: (rows[j]["val_acc"], j))
    p = rows[i]["val_acc"]
    margin = max(2 * (p * (1 - p) / n_val) ** 0.5, 4 / n_val)
    if p - rows[last]["val_acc"] <= margin + 1e-12:
        return last, last_dir
    return i, run_dir / ("finetune" if rows[i]["round"] == "finetune" else f"round{rows[i]['round']}")


def _finish(run_dir: Path, final_dir: Path, rows: list[dict[str, Any]], log, n_val: int = 0) -> int:
    from ..report import plot_lines
    write_json(run_dir / "rounds.json", rows)
    cols = ["round", "model", "pseudo_labels", "pl_precision", "val_acc", "test_acc", "minutes"]
    if any("corrected_labels" in r for r in rows):  # --label-correction: the labels after the student's corrections
        cols[4:4] = ["corrected_labels", "corrected_precision"]
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    table = "\n".join(md) + "\n"
    atomic_write_text(run_dir / "rounds.md", table + "\nminutes: each round's training over all its attempts (an "
                      "interrupted and resumed round counts the time before the interruption too)\n")
    xs = list(range(len(rows)))
    series = {k: (xs, [r.get(k) or 0 for r in rows]) for k in ("val_acc", "test_acc") if any(r.get(k) for r in rows)}
    if series:
        plot_lines(series, run_dir / "rounds.png", "round", "accuracy", "Noisy Student rounds")
    chosen, src = _pick_final(run_dir, final_dir, rows, n_val)
    dst = run_dir / "checkpoints" / "best"
    copy_checkpoint(src / "checkpoints" / "best", dst)
    row = rows[chosen]
    write_json(run_dir / "final.json", {"round": row["round"], "from": src.name, "val_acc": row.get("val_acc"),
                                        "test_acc": row.get("test_acc")})
    log("\n" + table)
    key = "test_acc" if rows[0].get("test_acc") is not None else "val_acc"
    on = "test" if key == "test_acc" else "validation"
    if rows and rows[0].get(key) is not None and row.get(key) is not None:
        gain = 100 * (row[key] - rows[0][key])
        log(f"supervised only (round 0): {on} accuracy {rows[0][key]:.4f}   final model: {dst} (round "
            f"{row['round']}, {on} accuracy {row[key]:.4f}): {gain:+.1f} points from self-training")
        if gain <= 0 and len(rows) > 1:
            log("note: self-training did not beat the supervised-only round 0 here. What helps most often: longer "
                "noised students (--student-epochs, e.g. 2-3x the teacher's steps), a larger student "
                "(--student-models cnn-m), a better teacher (--teacher-pretrained or --teacher RUN from `fewlabels "
                "transfer`), and a final --finetune-epochs 10 on the labelled images")
    elif rows and row.get(key) is None:
        log(f"final model: {dst} (round {row['round']}); no validation or test images to score it on")
    if chosen != len(rows) - 1:
        last, best = rows[-1], rows[chosen]
        log(f"note: the last round ({last['round']}, validation accuracy {last['val_acc']:.4f}) ended clearly below "
            f"round {best['round']} ({best['val_acc']:.4f}), so the final model is round {best['round']}'s. Students "
            "trained on noised data need more epochs than their teacher to overtake it: raise --student-epochs, or "
            "lower the noise (--student-augment weak, --student-drop-rate 0)")
    return chosen


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


__all__ = ["SelfTrainCommand", "selftrain"]

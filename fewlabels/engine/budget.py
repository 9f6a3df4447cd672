"""`--budget-minutes`: size a run's epochs to the minutes a user has, from speeds measured on this machine.

A run is a few phases (train: one; selftrain: the teacher, each student, the fine-tune), each with its epochs, the
images it trains on per epoch, its evaluation sets and, for selftrain, the pool a teacher labels after it. Before
the run, each model is timed here for a few steps on its own training set, with its own augmentation (a short fit()
on a sample: the second epoch is timed, so start-up costs are left out), and for one evaluation batch. The predicted
minutes are linear in one factor f that scales every phase's epochs alike (so a recipe keeps its shape: teacher and
students in the same proportion); f is chosen so that training, evaluation and labelling fill the budget. The plan
(speeds, epochs, prediction) is saved in the run folder, so a resumed run keeps its epochs whatever the machine
does meanwhile, and reported at the end beside the minutes it took. Phases whose size is only known later
(selftrain's students: the pseudo-labels that pass the threshold) are re-planned when it is (`replan`), to the minutes
then left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..config import group, opt
from ..console import Console
from ..errors import FewLabelsError
from .config import TrainConfig, eval_batch
from .loop import TrainSet, Watch, fit, images_per_epoch, progressive_side


@group
class TimeBudget:
    """Epochs sized to the minutes a user has."""

    budget_minutes: float | None = opt(None, "size the epochs to this many minutes of this machine: every epoch count "
                                       "(the recipe's or yours) is scaled by one factor, from speeds measured at the "
                                       "start (training, evaluation and pool labelling count; start-up and the few "
                                       "seconds of timing do not); selftrain re-plans each student for its pseudo-"
                                       "labels and the minutes left; the plan is saved as RUN/budget.json and kept "
                                       "on resume", gt=0, le=100_000)

PROBE_STEPS = 4  # timed steps per model (after as many untimed ones)


@dataclass
class Phase:
    """One fit() of a run: its epochs as configured, the images it trains on per epoch, the images evaluated after
    an evaluated epoch (every `eval_every`), and the images a teacher labels after it (selftrain's pool)."""

    name: str
    epochs: int
    train_images_per_epoch: int
    train_images_per_s: float
    eval_images: int = 0
    eval_every: int = 1
    eval_images_per_s: float = float("inf")
    labels_after: int = 0  # pool images this phase's model labels once it is trained
    label_images_per_s: float = float("inf")

    def seconds(self, f: float) -> tuple[float, float]:
        """(seconds that scale with the epochs, seconds that do not) at factor f."""
        epochs = f * self.epochs
        train = epochs * self.train_images_per_epoch / self.train_images_per_s
        evals = math.ceil(epochs / self.eval_every) * self.eval_images / self.eval_images_per_s
        return train + evals, self.labels_after / self.label_images_per_s


def plan(phases: list[Phase], minutes: float, strict: bool = True) -> dict[str, Any]:
    """Epochs per phase (at least 1) so that the predicted total is `minutes`: {"epochs": {name: n}, "factor",
    "predicted_minutes", "phases": [each Phase, its speeds measured]}. strict=False: one epoch each when even that
    does not fit, instead of the error (a re-plan in the middle of a run never fails it)."""
    budget = minutes * 60
    scaled = sum(p.seconds(1.0)[0] for p in phases)
    fixed = sum(p.seconds(1.0)[1] for p in phases)
    if scaled <= 0:
        raise FewLabelsError("--budget-minutes: the run has nothing to train")

    def at(f: float) -> tuple[dict[str, int], float]:  # whole epochs at factor f, and their predicted minutes
        ep = {p.name: max(1, round(f * p.epochs)) for p in phases}
        return ep, sum(sum(p.seconds(ep[p.name] / p.epochs)) for p in phases) / 60

    f = max(0.0, (budget - fixed) / scaled)
    epochs, predicted = at(f)
    if predicted > minutes:  # whole epochs and whole evaluations overshoot: the largest factor whose plan fits
        lo, hi = 0.0, f
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if at(mid)[1] <= minutes else (lo, mid)
        f = lo
        epochs, predicted = at(f)
    if strict and predicted > minutes * 1.1:
        shortest = sum(sum(p.seconds(1 / p.epochs)) for p in phases) / 60
        raise FewLabelsError(f"--budget-minutes {minutes:g} is too short for this run on this machine: one epoch of "
                             f"each phase alone takes about {shortest:.1f} minutes (measured). Give at least "
                             f"{math.ceil(shortest * 1.2)}, fewer rounds, or a smaller model")
    return {"budget_minutes": minutes, "factor": round(f, 4), "epochs": epochs,
            "predicted_minutes": round(predicted, 2),
            "phases": [{"name": p.name, "configured_epochs": p.epochs, "train_images_per_epoch":
                        p.train_images_per_epoch, "train_images_per_s": round(p.train_images_per_s, 1),
                        "eval_images": p.eval_images, "eval_every": p.eval_every,
                        "eval_images_per_s": _rate(p.eval_images_per_s), "labels_after": p.labels_after,
                        "label_images_per_s": _rate(p.label_images_per_s)} for p in phases]}


def _rate(v: float) -> float | None:
    return round(v, 1) if math.isfinite(v) else None


def _saved(planned: dict[str, Any], names: list[str], per_epoch: dict[str, int] | None = None
           ) -> list[Phase] | None:
    """The phases `names` of a saved plan (None for a plan saved before their evaluation and labelling sizes were
    recorded), with their images per epoch replaced where per_epoch names them."""
    saved = {p["name"]: p for p in planned["phases"]}
    if any(n not in saved or "eval_images" not in saved[n] for n in names):
        return None
    per_epoch, inf = per_epoch or {}, float("inf")
    return [Phase(n, saved[n]["configured_epochs"], per_epoch.get(n, saved[n]["train_images_per_epoch"]),
                  saved[n]["train_images_per_s"], saved[n]["eval_images"], saved[n]["eval_every"],
                  saved[n]["eval_images_per_s"] or inf, saved[n]["labels_after"],
                  saved[n]["label_images_per_s"] or inf) for n in names]


def pace(planned: dict[str, Any], done: dict[str, float], per_epoch: dict[str, int] | None = None) -> float:
    """How much slower (> 1) or faster the trained phases in `done` (name -> seconds they took, training and their
    evaluations) ran than the plan predicted at their epochs: a few timed steps miss what a whole epoch adds (the
    evaluations in between, the allocator, a busy machine). per_epoch: their real images per epoch, where known.
    Bounded to [2/3, 3/2]; 1 when nothing is known."""
    phases = [p for p in _saved(planned, list(done), per_epoch) or [] if p.train_images_per_epoch > 0]
    predicted = sum(p.seconds(planned["epochs"][p.name] / p.epochs)[0] for p in phases)
    took = sum(done[p.name] for p in phases)
    return min(1.5, max(2 / 3, took / predicted)) if predicted > 0 and took > 0 else 1.0


def replan(planned: dict[str, Any], names: list[str], minutes: float, per_epoch: dict[str, int],
           slowdown: float = 1.0) -> dict[str, Any] | None:
    """The epochs of the phases not yet run (`names`, from `planned`: the run's plan), sized to the `minutes` left,
    with the speeds measured at the start divided by `slowdown` (`pace` of the phases run so far) and the images
    per epoch now known (per_epoch: name -> images; selftrain plans a student for every pool image, its epoch is the
    pseudo-labels that passed the threshold). Never fails: one epoch each when the budget is spent. None for a plan
    saved before the phases' evaluation and labelling sizes were recorded."""
    phases = _saved(planned, names, per_epoch)
    if phases is None:
        return None
    phases = [replace(p, train_images_per_s=p.train_images_per_s / slowdown,
                      eval_images_per_s=p.eval_images_per_s / slowdown) for p in phases]
    return plan(phases, max(minutes, 0.0), strict=False)


def train_speed(model: nn.Module, train: TrainSet, cfg: TrainConfig) -> float:
    """Training images/s of `model` on `train` under `cfg` (its augmentation, batch, precision): a fit() of two short
    epochs on a sample of the set, the second timed. The model is trained by it: pass a throwaway copy.
    With --progressive-resize, the mean over the run's epochs: the speed is also timed with the batches scaled down
    as the run scales them (augmented at full size, then resized; the timed epoch's side is halfway up the ramp), and
    an epoch's seconds per image are taken as a + b x side² through the two timings (the fixed part a, augmentation
    and the resize itself, does not shrink with the side)."""
    full = _timed(model, train, cfg.replace(progressive_resize=None))
    smallest, side = cfg.progressive_resize, min(train.images.shape[2:]) if train.images.dim() == 4 else 0
    if smallest is None or smallest >= side:
        return full
    mid = progressive_side(1, 2, side, smallest, 1.0)  # the second probe epoch's side under progressive_end=1
    ramp = cfg.replace(progressive_end=1.0)
    # twice: the first steps at a new image size are slow (kernels are set up per shape), and the timed epoch is the
    # first at its size; the second probe finds them ready, as every epoch after the first at a size does in a run
    _timed(model, train, ramp)
    t_full, t_mid = 1 / full, 1 / _timed(model, train, ramp)
    b = max(0.0, (t_full - t_mid) / (side * side - mid * mid))
    sides = [progressive_side(e, cfg.epochs, side, smallest, cfg.progressive_end) for e in range(cfg.epochs)]
    return len(sides) / sum(t_full - b * (side * side - s * s) for s in sides)


def _timed(model: nn.Module, train: TrainSet, cfg: TrainConfig) -> float:
    n = train.images.shape[0]
    steps = PROBE_STEPS
    need = min(n, steps * cfg.batch_size * (1 + (cfg.unlabelled_ratio > 0)))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(n, generator=g)[:need]
    sample = TrainSet(train.images[idx], train.targets[idx], train.has_label[idx],
                      train.pseudo[idx] if train.pseudo is not None else None,
                      train.teacher_logits[idx] if train.teacher_logits is not None else None, norm=train.norm)
    probe = cfg.replace(epochs=2, warmup_epochs=0, ema=0.0, eval_every=1, min_steps_per_epoch=steps,
                        tensorboard=False)
    res = fit(model, sample, probe, watch=Watch(log=Console(quiet=True)))
    return float(res.history[-1]["images_per_s"])


def eval_speed(model: nn.Module, images: torch.Tensor, norm: tuple, cfg: TrainConfig, *, tta_flip: bool = False,
               tta_translate: int = 0) -> float:
    """Images/s of predict_logits for `model` (one warm-up batch, then up to two timed)."""
    from ..eval import predict_logits
    from ..utils import pick_device, pick_dtype

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    b = min(images.shape[0], eval_batch(cfg, images.shape))
    x = images[:b]
    kw = {"batch_size": b, "device": device, "dtype": dtype, "tta_flip": tta_flip, "tta_translate": tta_translate,
          "gather": False}
    predict_logits(model, x, *norm, **kw)
    t0 = time.perf_counter()
    predict_logits(model, images[:2 * b], *norm, **kw)
    return min(images.shape[0], 2 * b) / max(time.perf_counter() - t0, 1e-9)


def phase(name: str, model: nn.Module, train: TrainSet, cfg: TrainConfig, evals: dict, *,
          per_epoch: int | None = None, pool: torch.Tensor | None = None, tta: tuple[bool, int] = (False, 0)
          ) -> Phase:
    """A Phase with this machine's speeds for `model` (timed on copies: the model itself is left as it is): training
    on `train` under `cfg`, evaluating `evals` (name → ImageSet) and, given the `pool` images it labels afterwards,
    labelling them with `tta` (flip, translate). per_epoch: the images per epoch when `train` is only a sample of
    the phase's real set (selftrain's students)."""
    import copy

    from ..utils import pick_device
    speed = train_speed(copy.deepcopy(model), train, cfg)
    device = pick_device(cfg.device)
    on_device = copy.deepcopy(model).to(device)
    eval_n = sum(len(s) for s in evals.values())
    sample = next(iter(evals.values())).images if eval_n else None
    eval_rate = (eval_speed(on_device, sample, train.norm, cfg, tta_flip=cfg.tta_flip, tta_translate=cfg.tta_translate)
                 if sample is not None else float("inf"))
    label_rate = (eval_speed(on_device, pool, train.norm, cfg, tta_flip=tta[0], tta_translate=tta[1])
                  if pool is not None and len(pool) else float("inf"))
    return Phase(name, cfg.epochs, per_epoch or images_per_epoch(train, cfg), speed, eval_n, cfg.eval_every,
                 eval_rate, len(pool) if pool is not None else 0, label_rate)


__all__ = ["Phase", "TimeBudget", "eval_speed", "images_per_epoch", "pace", "phase", "plan", "replan", "train_speed"]

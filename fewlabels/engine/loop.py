"""fit(): the one training loop every method uses.

Images live on the device as one uint8 tensor; each step takes a batch of indices, augments the whole batch there
(per-image random parameters, no per-image Python), normalises, optionally mixes (CutMix/MixUp on soft targets), and
takes an optimizer step under autocast. Targets are always soft (N, K) rows built by fewlabels.targets, so supervised
training, pseudo-labels and distillation differ only in the TrainSet (the rows, and a teacher's cached logits as
their own field) and the loss object passed in (losses.CrossEntropy, methods.distill.DistillLoss).

Imbalanced classes (`class_weights`, `sampler`): the class of an image is the argmax of its target row, over the
images that have a label (pseudo-labelled ones included, as their pseudo-label's class); images without a label
(distillation's unlabelled images) are never weighted and keep their uniform share of the draws.

Resuming: at the end of every epoch `RUN/checkpoints/last/` is replaced atomically with the weights, optimizer, EMA
and history. Every epoch's randomness is derived from (seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..config import checked
from ..console import Console
from ..data.imageset import ImageSet
from ..errors import FewLabelsError
from ..eval import accuracy, check_tta_translate, normalize, predict_logits, stats_tensors
from ..losses import CrossEntropy
from ..targets import Batch
from ..targets import mix as mix_rows
from ..utils import (
    autocast,
    environment_info,
    is_main_process,
    pick_device,
    pick_dtype,
    release_memory,
    synchronize,
    to_device,
    tune_cpu_allocator,
)
from .checkpoint import load_train_state, save_checkpoint
from .config import TrainConfig, eval_batch, micro_batch
from .optim import Lookahead, build_optimizer, lr_factor, set_lr

# (model, images (B, C, H, W) float, the batch's targets) -> scalar loss
LossFn = Callable[[nn.Module, torch.Tensor, Batch], torch.Tensor]


@dataclass
class TrainSet:
    """What a model trains on: uint8 images (N, C, H, W) and their normalisation `norm` (per-channel (mean, std) on
    [0, 1]), or float feature rows (N, D) of a frozen backbone (the linear probe: no augmentation, no normalisation,
    no `norm`); soft target rows (N, K) (all-zero where an image has no target, e.g. unlabelled images under
    distillation); `has_label` (N,); `pseudo` (N,) marking pseudo-labelled images for the labelled:pseudo batch
    ratio; `teacher_logits` (N, K), a teacher's cached outputs for distillation."""

    images: torch.Tensor
    targets: torch.Tensor
    has_label: torch.Tensor
    pseudo: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if n == 0:
            raise FewLabelsError("there are no training images: check the label budget and the data folder")
        if self.targets.shape[0] != n or self.has_label.shape != (n,):
            raise ValueError("images, targets and has_label must have the same length")
        if self.teacher_logits is not None and self.teacher_logits.shape != self.targets.shape:
            raise ValueError("teacher_logits must have the targets' shape (N, K)")
        if self.norm is None and not self.features:
            raise ValueError("uint8 images need their normalisation: TrainSet(..., norm=(mean, std))")

    @property
    def features(self) -> bool:
        """Float feature rows (N, D) rather than uint8 images."""
        return self.images.is_floating_point()


@dataclass
class FeatureSet:
    """Cached features (N, D) float and their labels (N,): an evaluation set of the linear probe (Watch.evals)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Watch:
    """What fit() evaluates, writes and prints. evals: named image sets evaluated after each epoch; the one named
    `select` picks checkpoints/best (without it, best = last: never select on the test set). run_dir: where
    checkpoints, metrics.jsonl and learning_curve.png go (None: nothing written); resume: from its last checkpoint.
    meta: what every checkpoint records (how to rebuild the model)."""

    evals: dict[str, ImageSet] = field(default_factory=dict)
    run_dir: str | Path | None = None
    meta: dict[str, Any] | None = None
    log: Callable[[str], None] = print
    select: str = "val"
    resume: bool = True


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    run_dir: Path | None = None
    best_row: dict[str, Any] | None = None  # metrics of the epoch saved as checkpoints/best (the last without val)

    @property
    def final(self) -> dict[str, Any]:
        """Metrics of the model a user gets from the run folder (checkpoints/best)."""
        return self.best_row or (self.history[-1] if self.history else {})

    def best_model(self) -> nn.Module:
        """The model saved as RUN/checkpoints/best, the one a user gets from the run folder and `final` describes.
        `model` is the last epoch's (EMA) weights, which differ when validation picked an earlier epoch: this is a
        copy of it (same device, dtype and memory format, so it evaluates as fit evaluated) with the best weights
        loaded; `model` itself when there is no run folder or no best checkpoint (then best = last)."""
        import copy

        from safetensors.torch import load_file

        from .checkpoint import _resolve
        folder = _resolve(self.run_dir / "checkpoints" / "best") if self.run_dir is not None else None
        if folder is None:
            return self.model
        device = next(self.model.parameters()).device
        best = copy.deepcopy(self.model)
        best.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)), strict=True)
        return best.eval()


def row_classes(targets: torch.Tensor, has_label: torch.Tensor) -> torch.Tensor:
    """The class of each row: argmax of its target, -1 where the image has no label."""
    cls = targets.argmax(1)
    return torch.where(has_label.to(cls.device), cls, torch.full_like(cls, -1))


def balanced_class_weights(classes: torch.Tensor) -> torch.Tensor:
    """Per-row loss weights n / (C · n_c) (scikit-learn's compute_class_weight("balanced")) for rows of class c ≥ 0,
    n the labelled rows and C the classes among them, so the weights average 1 over those rows and the loss keeps
    its scale (and --lr its meaning) while every class carries the same total weight; 1 for rows without a label."""
    lab = classes >= 0
    w = torch.ones(classes.shape, dtype=torch.float32)
    if not bool(lab.any()):
        return w
    counts = torch.bincount(classes[lab])
    present = int((counts > 0).sum())
    w[lab] = lab.sum().item() / (present * counts[classes[lab]].float())
    return w


def balanced_sampling_probs(classes: torch.Tensor) -> torch.Tensor:
    """Per-row draw probabilities under which every class is equally likely: 1/(C · n_c) of the labelled rows' share
    n_lab/n for a row of class c; rows without a label (class -1) keep their uniform 1/n. Sums to 1."""
    n = classes.numel()
    lab = classes >= 0
    p = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if bool(lab.any()):
        counts = torch.bincount(classes[lab])
        present = int((counts > 0).sum())
        p[lab] = (lab.sum().item() / n) / (present * counts[classes[lab]].double())
    return p


def _batches(ts: TrainSet, batch_size: int, ratio: float, g: torch.Generator, min_steps: int = 0,
             classes: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Index batches for one epoch. ratio > 0: each batch has B/(1+ratio) labelled and the rest pseudo-labelled
    images, and the epoch is one pass over the pseudo-labelled images (labelled ones are cycled). min_steps: a set
    smaller than min_steps batches is passed over several times (reshuffled) per epoch.

    classes (N,) (the balanced sampler; row_classes): the same number of batches of the same size, their images
    drawn with replacement so that every class is equally likely (balanced_sampling_probs) instead of shuffled
    passes; with ratio > 0 only the labelled part is drawn so, balanced over its own class counts, and the
    pseudo-labelled part stays one shuffled pass: every pseudo-label once an epoch."""
    n = ts.images.shape[0]
    if ratio <= 0 or ts.pseudo is None or not bool(ts.pseudo.any()) or bool(ts.pseudo.all()):
        bs = min(batch_size, n)
        reps = max(1, math.ceil(min_steps * bs / n))  # tiny labelled sets: several reshuffled passes per epoch
        if classes is not None:
            perm = torch.multinomial(balanced_sampling_probs(classes), (reps * n // bs) * bs, replacement=True,
                                     generator=g)
        else:
            perm = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
        return [perm[i:i + bs] for i in range(0, perm.numel() - bs + 1, bs)]  # drop_last keeps BN statistics sane
    pseudo_idx = ts.pseudo.nonzero().squeeze(1)
    lab_idx = (~ts.pseudo).nonzero().squeeze(1)
    b_lab = max(1, round(batch_size / (1 + ratio)))
    b_ps = max(1, batch_size - b_lab)
    steps = max(1, pseudo_idx.numel() // b_ps)
    ps = pseudo_idx[torch.randperm(pseudo_idx.numel(), generator=g)]
    if classes is not None:
        lab = lab_idx[torch.multinomial(balanced_sampling_probs(classes[lab_idx]), steps * b_lab, replacement=True,
                                        generator=g)]
    else:
        reps = math.ceil(steps * b_lab / lab_idx.numel())
        lab = torch.cat([lab_idx[torch.randperm(lab_idx.numel(), generator=g)] for _ in range(reps)])
    return [torch.cat([lab[i * b_lab:(i + 1) * b_lab], ps[i * b_ps:(i + 1) * b_ps]]) for i in range(steps)]


def images_per_epoch(train: TrainSet, cfg: TrainConfig) -> int:
    """The images fit() trains on per epoch on `train` under `cfg` (its steps times their batches)."""
    classes = row_classes(train.targets, train.has_label).cpu() if cfg.sampler == "balanced" else None
    return sum(b.numel() for b in _batches(train, cfg.batch_size, cfg.unlabelled_ratio,
                                           torch.Generator().manual_seed(cfg.seed), cfg.min_steps_per_epoch, classes))


def progressive_side(epoch: int, epochs: int, full: int, smallest: int | None, end: float = 0.75) -> int:
    """The image side epoch `epoch` (0-based) of `epochs` trains at under --progressive-resize `smallest`: from
    `smallest` at the first epoch, growing linearly and rounded down to a multiple of 4 px, to `full` from epoch
    end x epochs on (FFCV's ramp). `full` when off, or when `smallest` is not smaller."""
    last = end * epochs
    if not smallest or smallest >= full or epoch >= last:
        return full
    return min(full, max(smallest, 4 * int((smallest + (full - smallest) * epoch / last) / 4)))


def check_progressive(cfg: TrainConfig, shape: tuple[int, ...] | torch.Size) -> None:
    """A clear error for a --progressive-resize that is not smaller than the images (or that feature rows cannot
    have)."""
    side = cfg.progressive_resize
    if side is None:
        return
    if len(shape) < 4:
        raise FewLabelsError("--progressive-resize needs images, and this run trains on cached features: drop it")
    if side >= min(shape[2:]):
        smaller = max(8, min(shape[2:]) * 5 // 8)
        hint = f"a smaller side (e.g. {smaller}) or " if smaller < min(shape[2:]) else ""
        raise FewLabelsError(f"--progressive-resize {side} (given, or the recipe's) is not smaller than the images "
                             f"({shape[2]} x {shape[3]}): give {hint}--progressive-resize none")


def _resized(x: torch.Tensor, side: int, memory_format: torch.memory_format) -> torch.Tensor:
    """A normalised float batch scaled (bilinear, antialiased) so that its shorter side is `side`."""
    h, w = x.shape[-2:]
    if side >= min(h, w):
        return x
    size = (side, round(w * side / h)) if h <= w else (round(h * side / w), side)
    out = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=memory_format)


def _progress(total: int, desc: str, log: Callable[[str], None]):
    """An epoch's progress bar in images (images/s and ETA), on a terminal only and never under --quiet."""
    if not getattr(log, "bars", sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=False, dynamic_ncols=True)


def _evaluate(model: nn.Module, sets: dict[str, ImageSet], norm: tuple | None, cfg: TrainConfig,
              device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
    out = {}
    for name, s in sets.items():
        if s.images.is_floating_point():  # feature rows (an object with .images (N, D) and .labels): no TTA
            with torch.no_grad(), autocast(device, dtype):
                b = eval_batch(cfg)
                logits = torch.cat([model(s.images[i:i + b].to(device)).float()
                                    for i in range(0, s.images.shape[0], b)])
            out[f"{name}_acc"] = accuracy(logits, s.labels)
            continue
        logits = predict_logits(model, s.images, *norm, batch_size=eval_batch(cfg, s.images.shape), device=device,
                                dtype=dtype, tta_flip=cfg.tta_flip, tta_translate=cfg.tta_translate,
                                channels_last=cfg.channels_last)
        out[f"{name}_acc"] = accuracy(logits, s.labels)
    return out


def _init_from_data(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """The model's data-dependent initialisation (patch whitening) on up to 5,000 seeded training images."""
    init = getattr(model, "init_from_data", None)
    g = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(images.shape[0], generator=g)[:5000].to(images.device)
    if init is None or not init(normalize(images[pick].to(mean.device), mean, std, channels_last=False)):
        log(f"note: {type(model).__name__} has no data-dependent initialisation; whiten_stem is ignored")


def fit(model: nn.Module, train: TrainSet, cfg: TrainConfig, loss_fn: LossFn | None = None, watch: Watch | None = None,
        *, lr_scale: dict[str, float] | None = None,
        on_epoch_start: Callable[[nn.Module, int], None] | None = None) -> FitResult:
    """Train `model` on `train` with the loss object `loss_fn` (default: losses.CrossEntropy) and return it (with EMA
    weights when EMA is on); `watch` says what is evaluated, written and printed.

    lr_scale: learning-rate multiplier per parameter name (layer-wise rates). on_epoch_start(model, epoch): a hook,
    e.g. to unfreeze a backbone after a first phase.

    cfg.class_weights = "balanced" scales each target row by its class's weight once, here, on a copy (the caller's
    targets stay as they are): with soft targets L = -Σ_k w·p_k·log q_k = w·CE, so the loss stays a mean over the
    batch of weighted terms, label smoothing and selftrain's confidence scaling compose by multiplication, and
    MixUp/CutMix mix the scaled rows linearly (a mixed image's weight is the mix of its two images' weights). It
    needs a loss that is that cross-entropy (CrossEntropy): another loss may read the targets' mass otherwise
    (distillation tells whole labels by rows summing to 1), and is refused. cfg.sampler = "balanced" draws the
    batches by class (see _batches) and works with any loss.
    """
    from ..augment import Mixer, build_augment

    cfg = checked(cfg)
    loss_fn = loss_fn if loss_fn is not None else CrossEntropy()
    watch = watch if watch is not None else Watch()
    evals, run_dir, log, select, norm = watch.evals or {}, watch.run_dir, watch.log, watch.select, train.norm
    if cfg.class_weights != "none" and cfg.sampler != "uniform":
        raise FewLabelsError(f"--class-weights {cfg.class_weights} and --sampler {cfg.sampler} each even out the "
                             "classes, and together over-correct (a class with 10x fewer images would count 10x "
                             "more than the others): keep one of them")
    if cfg.class_weights != "none" and not isinstance(loss_fn, CrossEntropy):
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise FewLabelsError(f"--class-weights {cfg.class_weights} weights the cross-entropy through its targets, "
                             f"which this method's loss ({name}) does not read as weights: balance the classes with "
                             f"--sampler balanced instead")
    features = train.features
    if features and (cfg.augment != "none" or cfg.mixup > 0 or cfg.cutmix > 0 or cfg.whiten_stem or cfg.tta_flip
                     or cfg.tta_translate > 0):
        raise ValueError("feature rows train without augmentation, MixUp/CutMix, whitening or TTA")
    if cfg.tensorboard:
        from .. import tensorboard_events as tb
        tb.check_available()  # before any work
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()  # fewer page faults per step (benchmarks/results/cpu_allocator.md)
    if not is_main_process():  # under torchrun only rank 0 prints; run_dir is this rank's own (distributed.shadow)
        log = Console(quiet=True)
    run_dir = Path(run_dir) if run_dir is not None else None
    ddp = distributed.active()  # one of several torchrun processes: DDP (see fewlabels/distributed.py)
    world, rank = distributed.world_size() if ddp else 1, distributed.rank() if ddp else 0
    model = model.to(device)
    if ddp and cfg.sync_bn:
        if device.type != "cuda":
            raise FewLabelsError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on GPUs only): on the CPU "
                                 "drop it, and each process uses the BatchNorm statistics of its share of the batch")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # (N, C, H, W) uint8 (or (N, D) features), on the device for the whole run; a set too large for the GPU (over a
    # third of its free memory) stays in host memory (memory-mapped when it came from the cache) and each batch is
    # copied over as it is drawn
    images = train.images if _stays_on_host(train.images, device) else train.images.to(device)
    classes = (row_classes(train.targets, train.has_label).cpu()
               if cfg.class_weights != "none" or cfg.sampler != "uniform" else None)
    targets = train.targets.to(device, torch.float32)
    if cfg.class_weights == "balanced":  # a new tensor: `.to` may have returned the caller's own
        weights = balanced_class_weights(classes)
        targets = targets * weights.to(device).unsqueeze(1)
        lab = classes >= 0
        if bool(lab.any()):
            log(f"balanced class weights: {float(weights[lab].min()):.3g} (the largest class) to "
                f"{float(weights[lab].max()):.3g} (the smallest), over {int(lab.sum())} labelled images")
    draw_by = classes if cfg.sampler == "balanced" else None
    chunk = micro_batch(cfg, images.shape)
    if 0 < chunk < cfg.batch_size:
        log(f"memory: each step's {cfg.batch_size} images go through the model in chunks of {chunk}"
            + (" (--micro-batch 0: whole batches)" if cfg.micro_batch is None else ""))
    has_label = train.has_label.to(device)
    teacher_logits = train.teacher_logits.to(device, torch.float32) if train.teacher_logits is not None else None
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    augment = None if features else build_augment(
        cfg.augment, image_size=images.shape[2], ra_num_ops=cfg.ra_num_ops, ra_magnitude=cfg.ra_magnitude,
        hflip=cfg.hflip is not False, padding=cfg.padding, cutout=cfg.cutout, alternating_flip=cfg.alternating_flip)
    mixer = (Mixer(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob, per_image=cfg.mix_per_image)
             if cfg.mixup > 0 or cfg.cutmix > 0 else None)

    if cfg.whiten_stem:
        _init_from_data(model, images, *stats_tensors(*norm, device), cfg, log)
    opt = build_optimizer(model, cfg, lr_scale)
    g0 = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = len(_batches(train, cfg.batch_size, cfg.unlabelled_ratio, g0, cfg.min_steps_per_epoch,
                                   draw_by))
    total_steps = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup > total_steps // 2:  # a warm-up as long as the run would never reach --lr or decay from it
        log(f"note: --warmup-epochs {cfg.warmup_epochs:g} is more than half of the {cfg.epochs} epochs: warming up "
            f"over the first half instead")
        warmup = total_steps // 2
    check_progressive(cfg, images.shape)
    if cfg.tta_translate > 0:  # checked now, not at the first evaluation after an epoch of training
        check_tta_translate(cfg.tta_translate, images.shape[2:])
    ema = None
    if cfg.ema > 0:
        from timm.utils import ModelEmaV3
        # warm-up (timm's: decay = min(ema, 1 - (1 + step)^(-2/3))): without it the starting weights keep a share
        # ema^steps of the average, e.g. 25 % after 1,400 steps at 0.999, and a short run's EMA model is far worse
        ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True)
    lookahead = Lookahead(model, cfg.lookahead, cfg.lookahead_every) if cfg.lookahead > 0 else None
    # fp16 (CUDA GPUs without bf16, or --precision fp16) needs loss scaling: small gradients underflow otherwise
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    start_epoch, history, best, best_row = 0, [], None, None
    last_dir = run_dir / "checkpoints" / "last" if run_dir else None
    state = load_train_state(last_dir) if (watch.resume and last_dir) else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.module.load_state_dict(state["ema"])
        if lookahead is not None and "lookahead" in state:
            lookahead.load_state_dict(state["lookahead"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if "loss" in state and hasattr(loss_fn, "load_state_dict"):  # e.g. SelfCorrecting's corrected targets
            loss_fn.load_state_dict(state["loss"])
        start_epoch = int(state["epoch"]) + 1
        history = [dict(h) for h in _decode_history(state)]
        best = state.get("best")
        best_row = _best_row(history, select, best)
        log(f"resuming from {last_dir} after epoch {start_epoch}/{cfg.epochs}")
    meta = dict(watch.meta or {})
    meta.setdefault("environment", environment_info())
    meta["train_config"] = {**cfg.asdict(), "micro_batch": chunk}  # the chunk used (its default: per device, size)
    # a resumed run's events from its first replayed step on are dropped (purge_step), so curves have no doubles
    events = (tb.writer(run_dir, purge_step=start_epoch * steps_per_epoch + 1 if start_epoch else None)
              if cfg.tensorboard and run_dir is not None else None)

    net, wrapped_for = model, None  # what the loss calls: model, or its DDP wrapper under torchrun
    for epoch in range(start_epoch, cfg.epochs):
        if on_epoch_start is not None:
            on_epoch_start(model, epoch)
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout / drop-path, replayable on resume
        batches = _batches(train, cfg.batch_size, cfg.unlabelled_ratio, g, cfg.min_steps_per_epoch, draw_by)
        if ddp:
            # every rank drew the same global batches; each trains on its strided share of each, with its own
            # augmentation and dropout streams (seed, epoch, rank); DDP averages the gradients over the ranks
            batches = [b[:b.numel() - b.numel() % world][rank::world] for b in batches]
            g = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * 4_099 + rank)
            torch.manual_seed((cfg.seed * 100_003 + epoch) * 4_099 + rank)
            trainable = tuple(p.requires_grad for p in model.parameters())
            if trainable != wrapped_for:  # (re)wrapped when a phase freezes or unfreezes parameters
                from torch.nn.parallel import DistributedDataParallel
                net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                wrapped_for = trainable
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        step_losses = torch.zeros(len(batches), device=device)  # to name the first bad step, without a sync per step
        seen = 0
        bar = _progress(sum(b.numel() for b in batches), f"epoch {epoch + 1}/{cfg.epochs}", log)
        side = (progressive_side(epoch, cfg.epochs, min(images.shape[2:]), cfg.progressive_resize,
                                 cfg.progressive_end) if cfg.progressive_resize else None)
        for i, idx in enumerate(batches):
            step = epoch * steps_per_epoch + i
            factor = lr_factor(step, total_steps, warmup, cfg.schedule)
            set_lr(opt, cfg.lr, factor)
            idx_cpu, idx = idx, to_device(idx, device)  # the alternating flip hashes CPU indices: no round trip
            # augmented and normalised in one pass over the batch (fused on CPU), straight into the step's layout
            xb = images[idx] if images.device == device else to_device(images[idx_cpu], device)
            x = xb if augment is None else augment.normalized(
                xb, norm[0], norm[1], generator=g, epoch=epoch, index=idx_cpu,
                out=torch.empty(xb.shape, device=device, memory_format=memory_format))
            if side is not None:
                x = _resized(x, side, memory_format)
            y, tl = targets[idx], teacher_logits[idx] if teacher_logits is not None else None
            if mixer is not None:
                x, y, lam = mixer.mix(x, y, generator=g)
                tl = mix_rows(tl, lam) if tl is not None and lam is not None else tl
            if events is not None and epoch == 0 and i == 0 and not features:  # what the model sees, once
                tb.log_images(events, "train/augmented", tb.denormalize(x[:32], *norm))
            opt.zero_grad(set_to_none=True)
            loss = _backward(net, loss_fn, x, Batch(y, has_label[idx], tl, idx if mixer is None else None), chunk,
                             device, dtype, scaler, ddp)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
            if lookahead is not None:
                lookahead.step(model, step, total_steps)
            if ema is not None:
                ema.update(model, step=step)
            loss_sum += loss.detach()
            step_losses[i] = loss.detach()
            seen += idx.numel()
            if bar is not None:
                bar.update(idx.numel())
        if bar is not None:
            bar.close()
        if lookahead is not None and epoch + 1 == cfg.epochs:
            lookahead.finish(model)  # the run ends on the slow weights
        synchronize(device)  # time the work, not the queueing
        seconds = time.perf_counter() - t0
        if ddp:  # the same loss, decisions and BatchNorm statistics on every rank: the same model everywhere
            loss_sum, step_losses = distributed.all_mean(loss_sum), distributed.all_mean(step_losses)
            seen *= world
            distributed.broadcast_(list(model.buffers()) + (list(ema.module.buffers()) if ema is not None else []))
        if not math.isfinite(loss_sum.item()):
            _diverged(step_losses, epoch, steps_per_epoch, total_steps, cfg, last_dir)
        eval_model = ema.module if ema is not None else model
        due = (epoch + 1) % max(1, cfg.eval_every) == 0 or epoch + 1 == cfg.epochs
        metrics = _evaluate(eval_model, evals, norm, cfg, device, dtype) if due else {}
        row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
               "train_loss": loss_sum.item() / max(1, len(batches)), "lr": cfg.lr * factor,
               "epoch_seconds": round(seconds, 3),
               "images_per_s": round(seen / max(seconds, 1e-9), 1), **({"side": side} if side else {}), **metrics}
        history.append(row)
        if events is not None:
            tb.log_epoch(events, row)
        line = " ".join(f"{k}={_fmt(v)}" for k, v in row.items())
        if hasattr(log, "epoch"):  # a Console: every epoch with -v, else at most one line every 30 s and the last
            log.epoch(line, last=epoch + 1 == cfg.epochs)
        else:
            log(line)
        sel = metrics.get(f"{select}_acc")
        improved = sel is not None and (best is None or sel > best)
        if improved:
            best = sel
        new_best = improved or select not in evals  # without a validation set, best = last
        if new_best:
            best_row = row
        if run_dir is not None:
            m = {**meta, "epoch": epoch + 1, "metrics": metrics}
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "history": _encode_history(history), "best": best}
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            if lookahead is not None:
                state["lookahead"] = lookahead.state_dict()
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            if hasattr(loss_fn, "state_dict"):
                state["loss"] = loss_fn.state_dict()
            # best before last: last's state records the new best, so a crash between the two must replay the epoch
            if new_best:
                save_checkpoint(run_dir / "checkpoints" / "best", eval_model, m)
            save_checkpoint(last_dir, eval_model, m, state)
            _write_metrics(run_dir, history)
    if events is not None:
        events.close()
    final = ema.module if ema is not None else model
    release_memory()  # the next phase (evaluation, labelling, the report) starts from what training still holds
    if run_dir is not None and history:
        from ..report import plot_history
        plot_history(history, run_dir / "learning_curve.png")
    return FitResult(final.eval(), history, best, run_dir, best_row)


def _backward(net: nn.Module, loss_fn: LossFn, x: torch.Tensor, batch: Batch, chunk: int,
              device: torch.device, dtype: torch.dtype | None, scaler: Any, ddp: bool) -> torch.Tensor:
    """The batch's mean loss, its gradients accumulated in the parameters' .grad. With chunk > 0 the batch goes
    through the model in chunks of that many images (less activation memory; BatchNorm sees each chunk), each chunk's
    loss weighted by its share of the batch, so the step is the same mean-loss step; under DDP the gradients are
    averaged across processes once, at the last chunk."""
    n = x.shape[0]
    if not 0 < chunk < n:  # the whole batch at once: the usual step, nothing sliced or added up
        with autocast(device, dtype):
            loss = loss_fn(net, x, batch)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss.detach()
    size = chunk
    total = torch.zeros((), device=x.device)
    for start in range(0, n, size):
        end = min(n, start + size)
        part = Batch(*(t[start:end] if t is not None else None for t in batch))
        sync = contextlib.nullcontext() if not ddp or end == n else net.no_sync()
        with sync:
            with autocast(device, dtype):
                loss = loss_fn(net, x[start:end], part)
            loss = loss * ((end - start) / n)
            (loss if scaler is None else scaler.scale(loss)).backward()
        total = total + loss.detach()
    return total


def _stays_on_host(images: torch.Tensor, device: torch.device) -> bool:
    """Whether a training set is better left in host memory: on a GPU, when it would take over a third of the free
    memory (the model, its activations and the optimizer need the rest)."""
    if device.type != "cuda" or images.device.type != "cpu":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() > free / 3


def _diverged(step_losses: torch.Tensor, epoch: int, steps_per_epoch: int, total_steps: int, cfg: TrainConfig,
              last_dir: Path | None) -> None:
    """Stop a run whose loss went NaN or infinite, before that epoch's weights are saved over the last good ones."""
    bad = (~torch.isfinite(step_losses)).nonzero().flatten()
    i = int(bad[0]) if bad.numel() else len(step_losses) - 1
    value = float(step_losses[i])
    kept = (f"{last_dir} keeps the weights of epoch {epoch}" if last_dir is not None and epoch > 0
            and last_dir.is_dir() else "no weights were saved")
    step = epoch * steps_per_epoch + i + 1
    raise FewLabelsError(f"the training loss became {value} at epoch {epoch + 1}, step {step} of {total_steps}: the "
                         f"run diverged, most often from a learning rate too high for this model and batch (--lr "
                         f"{cfg.lr:g}). Lower --lr or lengthen --warmup-epochs, with a new --out; {kept}")


def _best_row(history: list[dict], select: str, best: float | None) -> dict | None:
    if best is None:
        return history[-1] if history else None
    return next((h for h in history if h.get(f"{select}_acc") == best), None)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _encode_history(history: list[dict]) -> dict[str, torch.Tensor]:
    # train_state.pt is loaded with weights_only=True; keep it to tensors and plain containers
    keys = sorted({k for h in history for k in h})
    return {k: torch.tensor([float(h.get(k, float("nan"))) for h in history], dtype=torch.float64) for k in keys}


def _decode_history(state: dict) -> list[dict]:
    hist = state.get("history") or {}
    n = len(next(iter(hist.values()))) if hist else 0
    rows = []
    for i in range(n):
        row = {}
        for k, v in hist.items():
            x = float(v[i])
            if not math.isnan(x):
                row[k] = int(x) if k in ("epoch", "step", "side") else x
        rows.append(row)
    return rows


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    import json

    from ..utils import atomic_write_text, json_safe
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(json_safe(h)) + "\n" for h in history))

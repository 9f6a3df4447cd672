"""`fewlabels transfer`: start from a pretrained model.

probe     the pretrained feature extractor is frozen (its BatchNorm statistics too: features are computed in eval
          mode) and only a new linear head trains. Features are computed once and cached, so a probe epoch is a pass
          over an (N, D) tensor instead of a pass through the backbone.
finetune  every layer trains, with per-group learning rates: a backbone rate and a head rate, or layer-wise decay
          lr · decay^depth counted from the head; no weight decay on norm and bias. An optional first phase trains
          the head alone with the backbone frozen, then unfreezes it (as fastai's `fine_tune` does).
compare   scratch vs probe vs finetune on the same split, one table.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Options, group, opt
from ..console import Console
from ..data.imageset import ImageSet
from ..data.prepare import Budget, Source, eval_sets, overlap_note, prepare_data
from ..engine.checkpoint import read_meta, save_checkpoint
from ..engine.config import TRAINING
from ..engine.loop import FeatureSet, TrainSet, Watch, fit
from ..errors import FewLabelsError
from ..eval import normalize, stats_tensors
from ..runs import run_folder, save_config, source_split
from ..targets import one_hot
from ..utils import atomic_write_text, autocast, pick_device, pick_dtype, seed_everything, write_json
from .common import (
    Calibration,
    Model,
    Run,
    build_model,
    calibrate_checkpoint,
    flags,
    labelled_trainset,
    report_run,
    scored,
    train_config,
    with_report,
)


@group
class LayerRates:
    """Per-layer learning rates of a model that starts from pretrained weights."""

    backbone_lr: float | None = opt(None, "learning rate of every layer but the head, for a model that starts from "
                                    "pretrained weights (default lr/10)", ge=0)
    layer_decay: float | None = opt(None, "layer-wise decay for a model that starts from pretrained weights: lr · "
                                    "decay^depth counted from the head (overrides --backbone-lr)", gt=0, le=1)


@group
class Transfer:
    """How the pretrained model is used."""

    mode: str = opt("finetune", "probe, finetune, or compare (scratch vs probe vs finetune)",
                    choices=("probe", "finetune", "compare"))
    freeze_epochs: int = opt(0, "fine-tune: first epochs with the backbone's weights frozen (head only; its "
                             "BatchNorm statistics still adapt to the data, as in fastai)", ge=0)
    probe_epochs: int = opt(100, "probe: epochs over the cached features", ge=1)
    probe_lr: float = opt(1e-2, "probe: AdamW learning rate of the head", gt=0)
    probe_weight_decay: float = opt(1e-4, "probe: weight decay of the head", ge=0)
    probe_views: int = opt(1, "probe: cached views per image (1 = the clean image; more adds augmented views)", ge=1)


class TransferCommand(Options):
    """Transfer learning from a pretrained model: linear probe on cached features, or fine-tuning."""

    groups = (Run, Transfer, LayerRates, Source, Budget, Model, *TRAINING, Calibration)
    hide = ("overwrite", "unlabelled_ratio")  # no pseudo-labelled images to mix in


def head_names(model: nn.Module) -> set[str]:
    prefixes = tuple(getattr(model, "head_prefixes", ()))
    return {n for n, _ in model.named_parameters() if prefixes and n.startswith(prefixes)}


def lr_scales(model: nn.Module, base_lr: float, backbone_lr: float | None, layer_decay: float | None
              ) -> dict[str, float]:
    """Learning-rate multiplier per parameter: head 1; backbone backbone_lr/lr, or decay^depth."""
    if layer_decay is not None:
        depths = model.param_depths()
        return {n: layer_decay ** d for n, d in depths.items()}
    bb = (backbone_lr if backbone_lr is not None else base_lr / 10) / base_lr
    heads = head_names(model)
    return {n: 1.0 if n in heads else bb for n, _ in model.named_parameters()}


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    heads = head_names(model)
    for n, p in model.named_parameters():
        if n not in heads:
            p.requires_grad_(trainable)


@torch.no_grad()  # not inference_mode: the cached features must be usable in autograd (the head trains on them)
def extract_features(model: nn.Module, images: torch.Tensor, mean, std, *, device: torch.device,
                     batch_size: int = 512, augment=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pooled features (N, D) float32 of uint8 images, model in eval mode (BatchNorm statistics frozen)."""
    model.eval()
    m, s = stats_tensors(mean, std, device)
    dtype = pick_dtype("auto", device)
    out = []
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size].to(device)
        if augment is not None:
            xb = augment(xb, generator=generator)
        with autocast(device, dtype):
            out.append(model.forward_features(normalize(xb, m, s)).float().cpu())
    return torch.cat(out)


def probe(model: nn.Module, meta: dict, ds, split, cfg: TransferCommand, run_dir: Path, log) -> dict[str, Any]:
    """Linear probe: frozen backbone, features cached once, a new linear head trained on them."""
    from ..augment import build_augment

    device = pick_device(cfg.device)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    model.requires_grad_(False)
    lab = ds.train.subset(split.labelled)
    t0 = time.perf_counter()
    feats, labels = [extract_features(model, lab.images, ds.mean, ds.std, device=device)], [lab.labels]
    if cfg.probe_views > 1:
        aug = build_augment(cfg.augment, image_size=lab.images.shape[-2], hflip=bool(train_config(cfg, ds).hflip))
        g = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.probe_views - 1):
            feats.append(extract_features(model, lab.images, ds.mean, ds.std, device=device, augment=aug,
                                          generator=g))
            labels.append(lab.labels)
    evals_images = eval_sets(ds, split)
    evals = {n: FeatureSet(extract_features(model, s.images, ds.mean, ds.std, device=device), s.labels)
             for n, s in evals_images.items()}
    feature_seconds = time.perf_counter() - t0
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise FewLabelsError(f"probe needs a linear head; {meta['model']} has {type(head).__name__}")
    head.requires_grad_(True)
    head.float()
    seed_everything(cfg.seed)
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    # the head trains through fit() on the cached rows: AdamW, cosine without warm-up, fp32, no augmentation
    hcfg = train_config(cfg, ds, epochs=cfg.probe_epochs, lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay,
                        optimizer="adamw", momentum=0.9, schedule="cosine", warmup_epochs=0.0, ema=0.0,
                        lookahead=0.0, norm_bias_lr=1.0, min_steps_per_epoch=0, eval_every=10, precision="fp32",
                        channels_last=False, augment="none", mixup=0.0, cutmix=0.0, whiten_stem=False,
                        tta_flip=False, tta_translate=0)
    rows = torch.cat(feats)
    t1 = time.perf_counter()
    res = fit(head, TrainSet(rows, one_hot(torch.cat(labels), head.out_features, cfg.label_smoothing),
                             torch.ones(rows.shape[0], dtype=torch.bool)),
              hcfg, watch=Watch(evals=evals, log=lambda *_: None, select=""))
    hist = res.history
    head_seconds = time.perf_counter() - t1
    m = {**meta, "epoch": cfg.probe_epochs, "metrics": {k: v for k, v in hist[-1].items() if k.endswith("_acc")},
         "transfer": "probe"}
    save_checkpoint(run_dir / "checkpoints" / "best", model, m)
    save_checkpoint(run_dir / "checkpoints" / "last", model, m)
    write_json(run_dir / "metrics.json", hist)
    cal = ({"calibration": calibrate_checkpoint(run_dir / "checkpoints" / "best", model, evals_images,
                                                (ds.mean, ds.std), hcfg.replace(precision="auto"), log)}
           if cfg.calibrate else {})
    log(f"probe: features {feature_seconds:.1f}s, head {head_seconds:.1f}s ({cfg.probe_epochs} epochs): "
        + " ".join(f"{k}={v:.4f}" for k, v in hist[-1].items() if k.endswith("_acc")))
    return {**hist[-1], "feature_seconds": feature_seconds, "head_seconds": head_seconds,
            "probe_epoch_seconds": head_seconds / max(1, cfg.probe_epochs), **cal}


def finetune(model: nn.Module, meta: dict, ds, split, cfg: TransferCommand, run_dir: Path, log,
             scratch: bool = False) -> dict[str, Any]:
    tcfg = train_config(cfg, ds)
    scales = None if scratch else lr_scales(model, cfg.lr, cfg.backbone_lr, cfg.layer_decay)

    def phase(m: nn.Module, epoch: int) -> None:
        if not scratch and cfg.freeze_epochs > 0:
            set_backbone_trainable(m, epoch >= cfg.freeze_epochs)

    meta = {**meta, "transfer": "scratch" if scratch else "finetune"}
    res = fit(model, labelled_trainset(ds, split, cfg.label_smoothing), tcfg,
              watch=Watch(eval_sets(ds, split), run_dir, meta, log), lr_scale=scales, on_epoch_start=phase)
    return with_report(dict(res.final), res.best_model(), eval_sets(ds, split), (ds.mean, ds.std), tcfg,
                       run_dir / "checkpoints" / "best" if cfg.calibrate else None, log)


def transfer(cfg: TransferCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Transfer from pretrained weights: a linear probe on cached features, full fine-tuning with per-layer learning
    rates, or both against training from scratch (mode="compare"); returns {"run_dir", "labels", <mode>: metrics}.
    E.g. `transfer(mode="finetune", model="resnet56", pretrained="resnet56.th", data=..., layer_decay=0.7)`."""
    cfg = TransferCommand.build(cfg, kwargs)
    if not cfg.pretrained:
        raise FewLabelsError("transfer needs --pretrained: a weights file (.pth/.pt/.th/.safetensors), a fewlabels run "
                             "folder, or 'true' for a model's own pretrained weights (e.g. --model timm:resnet18)")
    if cfg.mode == "probe":
        unused = cfg.set_by_user(["epochs", "lr", "backbone_lr", "layer_decay", "freeze_epochs"])
        if unused:
            raise FewLabelsError(f"--mode probe trains a linear head on cached features and does not use "
                                 f"{flags(unused)}: its options are --probe-epochs, --probe-lr and "
                                 f"--probe-weight-decay (or fine-tune with --mode finetune)")
    elif cfg.freeze_epochs >= cfg.epochs:
        raise FewLabelsError(f"--freeze-epochs {cfg.freeze_epochs} keeps the backbone frozen for all {cfg.epochs} "
                             f"epochs: give fewer (or more --epochs), or use --mode probe for a frozen backbone")
    log = Console.of(cfg)
    inherited = None
    if cfg.mean is None and cfg.std is None and Path(cfg.pretrained).exists():
        try:  # a fewlabels checkpoint knows the normalisation it was trained with: keep it
            src = read_meta(cfg.pretrained)
            inherited = (tuple(src["mean"]), tuple(src["std"]))
        except (FewLabelsError, KeyError):
            pass  # a plain weights file: the dataset's statistics, unless --mean/--std say otherwise
    run_dir = run_folder(cfg.out, "transfer")
    cfg = save_config(run_dir, cfg, "transfer")
    ds, split = prepare_data(cfg, run_dir, log, source=source_split(cfg.pretrained), source_name=cfg.pretrained)
    if inherited is not None:
        if len(inherited[0]) == ds.train.image_shape[0]:
            ds.mean, ds.std = inherited
            log(f"normalisation of {cfg.pretrained}: mean {list(ds.mean)}, std {list(ds.std)}")
        else:
            log(f"note: {cfg.pretrained} was trained on {len(inherited[0])}-channel images, the data has "
                f"{ds.train.image_shape[0]}: normalising with the data's own statistics")
    modes = ["scratch", "probe", "finetune"] if cfg.mode == "compare" else [cfg.mode]
    results: dict[str, Any] = {}
    for mode in modes:
        sub = run_dir / mode if cfg.mode == "compare" else run_dir
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        mc = replace(cfg.group(Model), pretrained=None if mode == "scratch" else cfg.pretrained)
        model, meta = build_model(mc, ds, log, cfg.seed)
        if mode == "probe":
            r = probe(model, meta, ds, split, cfg, sub, log)
        else:
            r = finetune(model, meta, ds, split, cfg, sub, log, scratch=mode == "scratch")
        r["minutes"] = (time.perf_counter() - t0) / 60
        results[mode] = r
    # the model a user gets, at the top like every command's results: the one mode's, or in a comparison the mode
    # with the best validation accuracy (its run folder is RUN/<mode>)
    chosen = max(results, key=lambda k: results[k].get("val_acc", float("-inf"))) if len(results) > 1 else modes[0]
    top = {k: v for k, v in results[chosen].items() if k in ("val_acc", "test_acc", "macro_f1", "balanced_accuracy",
                                                             "ece", "nll")}
    out = {"run_dir": str(run_dir), "labels": len(split.labelled), "mode": chosen, **top, **results,
           **overlap_note(ds)}
    write_json(run_dir / "results.json", out)
    for mode, r in results.items():
        log(f"done: {run_dir}  {mode} {scored(r)}")
    if cfg.mode == "compare":
        lines = ["| method | val acc | test acc | minutes |", "|---|---|---|---|"]
        for k, r in results.items():
            lines.append(f"| {k} | {r.get('val_acc', float('nan')):.4f} | {r.get('test_acc', float('nan')):.4f} | "
                         f"{r['minutes']:.2f} |")
        atomic_write_text(run_dir / "compare.md", "\n".join(lines) + "\n")
        log("\n".join(lines))
        log(f"best on validation: {chosen} ({run_dir / chosen}); the table is in {run_dir / 'compare.md'}")
    report_run(run_dir, log, ds, split)
    return out


__all__ = ["ImageSet", "TransferCommand", "extract_features", "lr_scales", "transfer"]

"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 lr_scale: Mapping[str, float] | None = None) -> list[dict]:
    """Groups of trainable parameters: no weight decay on norm and bias (1-D) parameters, and an optional
    per-parameter learning-rate multiplier (layer-wise decay, backbone vs head). Frozen parameters are left out."""
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim <= 1 or name.endswith(".bias") else weight_decay
        scale = 1.0 if lr_scale is None else float(lr_scale.get(name, 1.0))
        g = groups.setdefault((wd, scale), {"params": [], "weight_decay": wd, "lr": lr * scale, "lr_scale": scale,
                                            "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return [dict(g) for g in groups.values()]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr_scale: Mapping[str, float] | None = None
                    ) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, lr_scale)
    for g in groups:
        g.pop("names")
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    if kind == "onecycle":
        return max(0.0, 1.0 - t)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def set_lr(opt: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = base_lr * g.get("lr_scale", 1.0) * factor

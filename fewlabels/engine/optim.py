"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import FewLabelsError
from .config import TrainConfig

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_bias_names(model: nn.Module) -> set[str]:
    """Names of the bias (shift) parameters of the model's normalisation layers."""
    return {f"{name}.bias" if name else "bias" for name, m in model.named_modules()
            if isinstance(m, NORM_LAYERS) and getattr(m, "bias", None) is not None}


def param_groups(model: nn.Module, weight_decay: float, lr: float,
                 lr_scale: Mapping[str, float] | None = None, norm_bias_lr: float = 1.0) -> list[dict]:
    """Groups of trainable parameters: no weight decay on norm and bias (1-D) parameters, and an optional
    per-parameter learning-rate multiplier (layer-wise decay, backbone vs head). norm_bias_lr further multiplies the
    rate of the norm layers' biases (airbench's `bias_scaler`). Frozen parameters are left out."""
    groups: dict[tuple[float, float], dict] = {}
    norm_biases = norm_bias_names(model) if norm_bias_lr != 1.0 else set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim <= 1 or name.endswith(".bias") else weight_decay
        scale = 1.0 if lr_scale is None else float(lr_scale.get(name, 1.0))
        if name in norm_biases:
            scale *= norm_bias_lr
        g = groups.setdefault((wd, scale), {"params": [], "weight_decay": wd, "lr": lr * scale, "lr_scale": scale,
                                            "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return [dict(g) for g in groups.values()]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr_scale: Mapping[str, float] | None = None
                    ) -> torch.optim.Optimizer:
    if cfg.norm_bias_lr <= 0:
        raise FewLabelsError(f"norm_bias_lr must be > 0 (got {cfg.norm_bias_lr}); 1 = the same rate as the weights")
    groups = param_groups(model, cfg.weight_decay, cfg.lr, lr_scale, cfg.norm_bias_lr)
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


class Lookahead:
    """airbench's lookahead: a slow copy of the weights that the fast ones are reset to every few steps.

    Every `every` steps: slow ← lerp(slow, fast, 1 - d), fast ← slow, with d = decay^every × progress³ (no pull
    early in training, the most at the end). `finish()` leaves the model on the slow copy. Buffers that are floats
    (BatchNorm statistics) follow the same rule, as in airbench.
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 5):
        if not 0.0 < decay < 1.0:
            raise FewLabelsError(f"lookahead decay must be in (0, 1), got {decay}")
        if every < 1:
            raise FewLabelsError(f"lookahead_every must be ≥ 1, got {every}")
        self.decay, self.every = decay, every
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total: int) -> None:
        """Call after the optimizer step number `step` (0-based) of `total`."""
        done = step + 1
        if done % self.every:
            return
        self._pull(model, self.decay ** self.every * (done / max(1, total)) ** 3)

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        self._pull(model, 1.0)

    def _pull(self, model: nn.Module, d: float) -> None:
        state = model.state_dict()
        slow = list(self.slow.values())
        fast = [state[k] for k in self.slow]
        torch._foreach_lerp_(slow, fast, 1.0 - d)
        for f, s in zip(fast, slow):
            f.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in self.slow.items():
            v.copy_(state[k])

"""Loss functions: pure, fp32, with the formula in the docstring.

Every method in fewlabels trains on soft targets (a probability vector per image, built by fewlabels.targets), so
one loss serves supervised training with label smoothing, CutMix/MixUp and pseudo-labels; distillation adds kd_loss.
A loss object (CrossEntropy and SelfCorrecting here, methods.distill.DistillLoss) is what fit() calls:
loss(model, x, batch); one with a state_dict() (SelfCorrecting's corrected targets) has it saved with the resume
state and restored on resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .targets import Batch


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross entropy against soft targets: L = -Σ_k p_k · log softmax(z)_k, averaged over the batch.

    logits: (N, K); target: (N, K) rows summing to 1. Computed in fp32 whatever the autocast dtype.
    """
    loss = -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return loss.mean() if reduction == "mean" else loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Distillation term of Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

    L_kd = T² · KL(softmax(t/T) ‖ softmax(s/T)), with batchmean reduction (sum over classes, mean over images).
    The T² factor keeps the gradient magnitude of this term roughly independent of T (the soft-target gradients
    scale as 1/T²). Computed in fp32.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


class CrossEntropy:
    """fit()'s default loss: soft cross-entropy of the model's outputs against the batch's target rows (per-class
    weights, label smoothing, mixing and confidence weights are all in the rows)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        return soft_cross_entropy(model(x), batch.targets)


class SelfCorrecting:
    """Cross-entropy against targets the model corrects as it trains: SELC (Lu & He 2022, "SELC: Self-Ensemble Label
    Correction Improves Learning with Noisy Labels"). Once `start()`ed, each time a correctable row i (`mutable`, e.g.
    a pseudo-label) is in a batch its target becomes t_i ← m·t_i + (1 − m)·softmax(z_i) (z_i: this step's outputs,
    no gradient through the update) and the loss is -Σ_k t_ik · log softmax(z_i)_k; other rows keep their targets.
    A temporal ensemble of the model's own predictions: at no extra forward pass, a wrong pseudo-label fades when the
    model keeps disagreeing with it. With `hard`, the loss takes each corrected row's top class instead (one-hot): the
    table is the same vote, but a pseudo-label only changes class once the model's predictions outweigh it, and the
    targets stay crisp rather than growing soft. Before `start()` it is CrossEntropy. The table of targets is the state
    saved for resume (state_dict / load_state_dict). One process: under torchrun each rank would correct its own copy.
    """

    def __init__(self, targets: torch.Tensor, mutable: torch.Tensor, momentum: float, hard: bool = False):
        if not 0 < momentum < 1:
            raise ValueError("momentum must be in (0, 1)")
        self.table = targets.detach().float().clone()
        self.mutable = mutable.to(self.table.device, torch.bool)
        self.momentum, self.hard, self.on = momentum, hard, False

    def start(self, on: bool = True) -> None:
        self.on = on

    def __call__(self, model: nn.Module, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        logits = model(x)
        if not self.on:
            return soft_cross_entropy(logits, batch.targets)
        if batch.index is None:
            raise ValueError("SelfCorrecting needs each batch's row indices (no MixUp/CutMix)")
        idx = batch.index.to(self.table.device)
        m = self.mutable[idx].unsqueeze(1)
        p = F.softmax(logits.detach().float(), dim=-1).to(self.table.device)
        rows = self.table[idx]
        rows = torch.where(m, self.momentum * rows + (1 - self.momentum) * p, rows)
        self.table[idx] = rows
        if self.hard:
            rows = F.one_hot(rows.argmax(1), rows.shape[1]).to(rows.dtype)
        y = torch.where(m.to(logits.device), rows.to(logits.device), batch.targets.float())
        return soft_cross_entropy(logits, y)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"table": self.table.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.table.copy_(state["table"])

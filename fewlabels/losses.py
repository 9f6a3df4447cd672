"""Loss functions: pure, fp32, with the formula in the docstring.

Every method in fewlabels trains on soft targets (a probability vector per image, built by fewlabels.targets), so
one loss serves supervised training with label smoothing, CutMix/MixUp and pseudo-labels; distillation adds kd_loss.
A loss object (CrossEntropy here, methods.distill.DistillLoss) is what fit() calls: loss(model, x, batch).
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

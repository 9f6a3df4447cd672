"""Loss functions: pure, fp32, with the formula in the docstring.

Every method in fewlabels trains on soft targets (a probability vector per image), so one loss serves
supervised training with label smoothing, CutMix/MixUp, pseudo-labels and distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing (Szegedy et al. 2016).

    target = (1 - ε) · onehot(y) + ε / K.  labels: int64 (N,) → float32 (N, K).
    """
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    t.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return t


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

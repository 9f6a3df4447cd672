"""Targets: every soft target a run learns from is built here, each kind once.

Training always learns from soft targets (N, K), one probability row per image, so supervised training, label
smoothing, MixUp/CutMix, pseudo-labels and distillation differ only in how the rows are built:

one_hot      true labels → (1 − ε)·onehot(y) + ε/K (label smoothing, Szegedy et al. 2016)
smooth       soft rows → (1 − ε)·t + ε/K (the same ε on pseudo-labels; one-hot rows give one_hot's result)
from_logits  a teacher's logits → its argmax one-hot (hard) or softmax(z/T) (soft); several teachers' are averaged
weighted     rows scaled by confidence^power: with soft cross-entropy L = -Σ_k w·p_k·log q_k = w·CE, a doubtful
             pseudo-label pulls less (a power-law form of SoftMatch's weighting, Chen et al. 2023)
mix          λ·t + (1 − λ)·t.flip(0): MixUp/CutMix on targets, and on cached teacher logits alike
Batch        what one training step's loss reads: the rows, which images have a label, the teacher's logits
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .utils import to_device


class Batch(NamedTuple):
    """One step's targets (B, K), has_label (B,), for distillation from cached outputs teacher_logits (B, K), and
    which rows of the training set the images are, `index` (B,) (None where images were mixed: rows of two images)."""

    targets: torch.Tensor
    has_label: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    index: torch.Tensor | None = None


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """int64 labels (N,) → float32 (N, K) rows (1 − ε)·onehot(y) + ε/K."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    t.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return t


def smooth(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft rows (N, K) → (1 − ε)·t + ε/K, float32 (unchanged for ε = 0)."""
    t = targets.float()
    return t * (1.0 - smoothing) + smoothing / t.shape[1] if smoothing else t


def from_logits(logits: torch.Tensor | list[torch.Tensor], *, hard: bool = True, temperature: float = 1.0
                ) -> torch.Tensor:
    """A teacher's logits (N, K), or several teachers' (a list, averaged): the one-hot rows of the argmax of the
    (mean) softmax (hard), or softmax(z/T) (soft)."""
    group = logits if isinstance(logits, (list, tuple)) else [logits]
    if hard:
        probs = torch.stack([g.float().softmax(1) for g in group]).mean(0)
        return torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).float()
    return torch.stack([(g.float() / temperature).softmax(1) for g in group]).mean(0)


def weighted(targets: torch.Tensor, confidence: torch.Tensor | None, power: float) -> torch.Tensor:
    """Rows scaled by confidence^power (power 0 or no confidence: unchanged)."""
    if power <= 0 or confidence is None:
        return targets
    return targets * confidence.float().clamp(0, 1).pow(power).unsqueeze(1)


def mix(targets: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """λ·t + (1 − λ)·t.flip(0) for rows (N, K); lam: a number or (N,) per image (timm's mixup_target)."""
    lam_t = to_device(torch.as_tensor(lam, dtype=torch.float32), targets.device).reshape(-1, 1)
    return targets * lam_t + targets.flip(0) * (1.0 - lam_t)

"""CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features") and MixUp (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") on whole batches.

As in timm's ``data/mixup.py``, each image is mixed with its partner in the batch flipped end to end
(``x.flip(0)``), which works for any batch size: in an odd batch the middle image is its own partner (mixing it
changes nothing). Targets are soft (N, K) probability rows and are mixed with the same weight λ as the pixels:
for CutMix λ is recomputed from the box actually pasted after clipping at the border, so the label mass of the
partner equals its share of the pixels exactly.

One formula covers every case: with a per-pixel weight w (N, 1, H, W), out = w·x + (1 − w)·x.flip(0) and
target = λ·t + (1 − λ)·t.flip(0) with λ = mean(w) per image; MixUp has w = λ everywhere, CutMix w = 0 inside the
box and 1 outside.
"""

from __future__ import annotations

import numpy as np
import torch

from fewlabels import targets as T
from fewlabels.errors import FewLabelsError
from fewlabels.utils import to_device


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_gen_device(generator), dtype=torch.float64).cpu()


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws from Beta(alpha, alpha), float64 on the CPU, reproducible through ``generator``.

    torch's Beta sampler takes no generator, so a NumPy generator is seeded from one draw of ``generator`` (or
    of torch's global RNG when None, so ``torch.manual_seed`` still makes runs reproducible).
    """
    if alpha <= 0:
        raise FewLabelsError(f"Beta concentration must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=_gen_device(generator)).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n))


def smooth_targets(target: torch.Tensor, num_classes: int | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Soft (N, K) float32 targets with label smoothing folded in: int64 labels (N,) (need num_classes) through
    ``targets.one_hot``, soft rows (N, K) through ``targets.smooth``."""
    if target.ndim == 1 and not target.is_floating_point():
        if num_classes is None:
            raise FewLabelsError("integer labels need num_classes to build soft targets")
        return T.one_hot(target, num_classes, smoothing)
    if target.ndim != 2:
        raise FewLabelsError(f"targets must be int labels (N,) or soft targets (N, K); got shape {tuple(target.shape)}")
    return T.smooth(target, smoothing)


mixup_target = T.mix  # the augment API's name for it


def rand_bbox(
    height: int, width: int, lam: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CutMix boxes covering ≈ 1 − λ of the image, clipped at the border (timm's ``rand_bbox``, batched).

    The box has sides int(H·√(1−λ)) × int(W·√(1−λ)) around a uniformly random centre and is clipped to the image,
    so it can be smaller than asked. lam: number (one box) or (N,) tensor (one box per image). Returns (N, 4)
    int64 [y0, y1, x0, x1] (half-open), CPU.
    """
    lam_t = torch.as_tensor(lam, dtype=torch.float64).cpu().reshape(-1)
    n = lam_t.numel()
    ratio = (1.0 - lam_t).clamp(0.0, 1.0).sqrt()
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    dev = _gen_device(generator)
    cy = torch.randint(0, height, (n,), generator=generator, device=dev).cpu()
    cx = torch.randint(0, width, (n,), generator=generator, device=dev).cpu()
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy + cut_h // 2).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx + cut_w // 2).clamp(0, width)
    return torch.stack([y0, y1, x0, x1], 1)


def box_lam(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """λ actually achieved by boxes (N, 4): 1 − pasted area / image area, float64 (N,)."""
    b = boxes.to(torch.float64)
    return 1.0 - (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2]) / (height * width)


def box_mask(boxes: torch.Tensor, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 1, H, W) bool, true inside each image's box [y0, y1) × [x0, x1)."""
    b = to_device(boxes, device, torch.int64)
    rows = torch.arange(height, device=device).view(1, height)
    cols = torch.arange(width, device=device).view(1, width)
    in_rows = (rows >= b[:, 0:1]) & (rows < b[:, 1:2])  # (N, H)
    in_cols = (cols >= b[:, 2:3]) & (cols < b[:, 3:4])  # (N, W)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def _blend(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """weight·x + (1 − weight)·x.flip(0) in float (integer images are rounded back).

    weight: (N, 1, 1, 1) or (N, 1, H, W). Written as two products rather than a lerp so that a 0/1 CutMix
    weight copies pixels exactly, and as arithmetic because torch.where is ~10x slower on CPU.
    """
    xf = x.float()
    w = to_device(weight, x.device, torch.float32)
    out = xf.flip(0).mul_(1.0 - w).addcmul_(xf, w)
    return out.round_().to(x.dtype) if not x.is_floating_point() else out.to(x.dtype)


def mixup(x: torch.Tensor, target: torch.Tensor, lam: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp with the flipped batch: (λ·x + (1−λ)·x.flip(0), λ·t + (1−λ)·t.flip(0)); lam: number or (N,)."""
    lam_t = torch.as_tensor(lam, dtype=torch.float32).reshape(-1).expand(x.shape[0])
    return _blend(x, lam_t.view(-1, 1, 1, 1)), mixup_target(target, lam_t)


def cutmix(x: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix with the flipped batch: paste box i of x.flip(0) into image i; targets mixed by the pasted area.

    boxes: (N, 4) or (1, 4) [y0, y1, x0, x1] from :func:`rand_bbox`.
    """
    n, _, h, w = x.shape
    boxes = boxes.expand(n, 4)
    keep = (~box_mask(boxes, h, w, x.device)).float()  # (N, 1, H, W): 0 inside the box
    return _blend(x, keep), mixup_target(target, box_lam(boxes, h, w))


class Mixer:
    """Batch CutMix/MixUp with soft targets, like timm's ``Mixup`` (modes "batch" and, with per_image, "elem").

    Args:
        mixup_alpha: Beta(α, α) for the MixUp weight; 0 disables MixUp.
        cutmix_alpha: Beta(α, α) for the CutMix area; 0 disables CutMix.
        prob: probability of mixing at all (per batch, or per image when per_image).
        switch_prob: probability of CutMix rather than MixUp when both alphas are > 0.
        per_image: draw λ, the box, and the CutMix/MixUp choice for every image instead of once per batch.
        label_smoothing: ε folded into the targets before mixing.
        num_classes: needed only when targets are given as integer labels.

    ``__call__(x, target, generator=None) -> (mixed x, mixed soft targets (N, K) float32)``: x is (N, C, H, W)
    (float; uint8 is blended in float and rounded back); target is int labels (N,) or soft targets (N, K).
    """

    def __init__(
        self,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        per_image: bool = False,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise FewLabelsError(
                "Mixer needs mixup_alpha ≥ 0, cutmix_alpha ≥ 0 and prob, switch_prob in [0, 1]; got "
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, prob={prob}, switch_prob={switch_prob}"
            )
        if not 0 <= label_smoothing < 1:
            raise FewLabelsError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.per_image = bool(per_image)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __repr__(self) -> str:
        return (
            f"Mixer(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
            f"switch_prob={self.switch_prob}, per_image={self.per_image}, label_smoothing={self.label_smoothing})"
        )

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> dict:
        """Draw the mixing choices: per image (or one, broadcast) use_cutmix, λ, boxes, and the realised λ."""
        k = n if self.per_image else 1
        apply = _rand(k, generator) < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cut = _rand(k, generator) < self.switch_prob
        else:
            use_cut = torch.full((k,), self.cutmix_alpha > 0)
        lam_mix = sample_beta(self.mixup_alpha, k, generator) if self.mixup_alpha > 0 else torch.ones(k).double()
        lam_cut = sample_beta(self.cutmix_alpha, k, generator) if self.cutmix_alpha > 0 else torch.ones(k).double()
        boxes = rand_bbox(height, width, lam_cut, generator)
        boxes[~(use_cut & apply)] = 0  # an empty box: nothing pasted
        lam = torch.where(use_cut, box_lam(boxes, height, width), lam_mix)
        lam = torch.where(apply, lam, 1.0)
        return {"use_cutmix": use_cut & apply, "lam": lam.expand(n), "boxes": boxes.expand(n, 4)}

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, t, _ = self.mix(x, target, generator)
        return x, t

    def mix(
        self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As calling the Mixer, and also the realised λ (N,) that mixed the targets (None: nothing mixed), for other
        per-image rows that must mix alike (a teacher's cached logits)."""
        if x.ndim != 4:
            raise FewLabelsError(f"Mixer expects images (N, C, H, W), got shape {tuple(x.shape)}")
        t = smooth_targets(to_device(target, x.device), self.num_classes, self.label_smoothing)
        if not self.active:
            return x, t, None
        n, _, h, w = x.shape
        s = self.sample(n, h, w, generator)
        cut = s["use_cutmix"].expand(n)
        lam = s["lam"]
        if not bool(cut.any()):
            if bool((lam == 1).all()):
                return x, t, None
            return _blend(x, lam.float().view(-1, 1, 1, 1)), mixup_target(t, lam), lam
        keep = (~box_mask(s["boxes"], h, w, x.device)).float()  # (N, 1, H, W): 0 in the box, empty for MixUp
        if bool(cut.all()):
            return _blend(x, keep), mixup_target(t, lam), lam
        # some images CutMix, some MixUp: the per-pixel weight is keep for CutMix images and λ for MixUp ones
        is_cut = to_device(cut, x.device, torch.float32).view(-1, 1, 1, 1)
        weight = keep * is_cut + to_device(lam, x.device, torch.float32).view(-1, 1, 1, 1) * (1.0 - is_cut)
        return _blend(x, weight), mixup_target(t, lam), lam

"""Batched RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a reduced
search space", https://arxiv.org/abs/1909.13719).

Each image of the batch gets ``num_ops`` ops drawn uniformly (with replacement) from the paper's 14, each with
its own magnitude noise, sign and apply/skip draw. The batch is never split into a Python loop over images:
per layer, the images are grouped by op index and each of the 14 ops runs once on its group (see
:class:`RandAugment`).

Magnitude scale
---------------
``magnitude`` M is on timm's 0..10 scale (``_LEVEL_DENOM = 10``): ``RandAugment(2, 9, magnitude_std=0.5)`` is
timm's ``rand-m9-n2-mstd0.5`` with the *increasing* op variants (``inc1``) and ``p=1``. Per image and layer the
magnitude is M + N(0, mstd) clipped to [0, 10] (mstd = inf draws uniformly from [0, M], like timm), then:

==============  ======================================================  =======================================
op              argument at magnitude m (± is a random sign per image)    torchvision RandAugment, bins=31
==============  ======================================================  =======================================
Identity        —                                                       same
AutoContrast    — (skipped when m = 0)                                  same (no magnitude)
Equalize        — (skipped when m = 0)                                  same (no magnitude)
Rotate          ± 30·m/10 degrees                                       ± 30·k/30  (k = tv magnitude)
Solarize        threshold 256 − 256·m/10 (pixels ≥ it are inverted)     255·(1 − k/30): at k = 0 inverts 255s
Color           factor 1 ± 0.9·m/10 (saturation blend)                  1 ± 0.9·k/30
Posterize       round(8 − 4·m/10) bits kept                             round(8 − 4·k/30) bits
Contrast        factor 1 ± 0.9·m/10                                     1 ± 0.9·k/30
Brightness      factor 1 ± 0.9·m/10                                     1 ± 0.9·k/30
Sharpness       factor 1 ± 0.9·m/10                                     1 ± 0.9·k/30
ShearX, ShearY  ± 0.3·m/10 (top-left corner fixed)                      ± 0.3·k/30
TranslateX/Y    ± round(0.45·m/10 · width/height) pixels                ± int(150/331·k/30 · width/height)
==============  ======================================================  =======================================

So torchvision's ``RandAugment(magnitude=k, num_magnitude_bins=31)`` has the same ranges as our M = k/3 (its
default ``magnitude=9`` is our M = 3; our M = 9 is its ``magnitude=27``), except that its translate is
150/331 = 0.4532 instead of 0.45 of the size, it truncates translations to whole pixels where we round, and its
Solarize threshold at k = 0 is 255 (not the identity) where ours is 256.

Differences from timm's ``rand-mM`` (which uses PIL): timm's default (non-``inc``) set maps enhance factors to
0.1 + 1.8·m/10 and Posterize/Solarize so that m = 0 is the *strongest* setting; we use the increasing variants so
that magnitude 0 is the identity for every op. Posterize keeps round(8 − 0.4·m) bits (torchvision and the
original AutoAugment range 8..4) instead of timm's ``PosterizeIncreasing`` 4 − int(0.4·m) (4..0 bits, never the
identity). AutoContrast and Equalize have no magnitude in the paper, timm or torchvision; here they are skipped
for an image whose magnitude is exactly 0, so that M = 0 disables RandAugment entirely. We sample with nearest
neighbour (timm: random bilinear/bicubic), fill with 0 by default (timm: 128), and leave out timm's extra
Invert/SolarizeAdd ops, which are not among the paper's 14.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fewlabels.augment import functional as F
from fewlabels.errors import FewLabelsError
from fewlabels.utils import to_device

#: The paper's 14 ops, in this order; op indices in :class:`RandAugmentParams` refer to this tuple.
OPS: tuple[str, ...] = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)

MAX_MAGNITUDE = 10.0  # timm's _LEVEL_DENOM: magnitude 10 is the largest argument of every op


def _enhance(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return 1.0 + 0.09 * m * sign  # 1 ± 0.9·m/10, ≥ 0.1 for m ≤ 10


def _only_where_positive(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a magnitude-free op so images with magnitude 0 pass through unchanged (M = 0 is the identity)."""

    def op(x: torch.Tensor, m: torch.Tensor, sign: torch.Tensor, fill: F.Fill) -> torch.Tensor:
        on = m > 0
        if bool(on.all()):
            return fn(x)
        out = x.clone()
        if bool(on.any()):
            idx = to_device(on.nonzero().flatten(), x.device)
            out[idx] = fn(x[idx])
        return out

    return op


def _scale(x: torch.Tensor) -> float:
    """Thresholds are given on the 0..255 scale; float images are on 0..1."""
    return 1.0 if x.dtype == torch.uint8 else 1.0 / 255.0


# name → fn(x, magnitude (N,), sign (N,) of ±1, fill) → x. magnitude/sign are CPU float64 tensors.
_OP_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "Identity": lambda x, m, s, fill: x.clone(),
    "AutoContrast": _only_where_positive(F.autocontrast),
    "Equalize": _only_where_positive(F.equalize),
    "Rotate": lambda x, m, s, fill: F.rotate(x, 3.0 * m * s, fill),
    "Solarize": lambda x, m, s, fill: F.solarize(x, (256.0 - 25.6 * m) * _scale(x)),
    "Color": lambda x, m, s, fill: F.adjust_saturation(x, _enhance(m, s)),
    "Posterize": lambda x, m, s, fill: F.posterize(x, (8.0 - 0.4 * m).round().long()),
    "Contrast": lambda x, m, s, fill: F.adjust_contrast(x, _enhance(m, s)),
    "Brightness": lambda x, m, s, fill: F.adjust_brightness(x, _enhance(m, s)),
    "Sharpness": lambda x, m, s, fill: F.adjust_sharpness(x, _enhance(m, s)),
    "ShearX": lambda x, m, s, fill: F.shear_x(x, 0.03 * m * s, fill),
    "ShearY": lambda x, m, s, fill: F.shear_y(x, 0.03 * m * s, fill),
    "TranslateX": lambda x, m, s, fill: F.translate_x(x, (0.045 * m * x.shape[3]).round() * s, fill),
    "TranslateY": lambda x, m, s, fill: F.translate_y(x, (0.045 * m * x.shape[2]).round() * s, fill),
}


def apply_op(
    x: torch.Tensor,
    name: str,
    magnitude: torch.Tensor | float,
    sign: torch.Tensor | float | None = None,
    fill: F.Fill = 0,
) -> torch.Tensor:
    """Apply RandAugment op ``name`` to every image of x with per-image magnitudes on the 0..10 scale.

    x: (N, C, H, W) uint8 or float in [0, 1]; magnitude: number or (N,) tensor (clipped to [0, 10]); sign: ±1
    per image for the signed ops (Rotate, Shear*, Translate*, and the enhance factors), default +1. Magnitude 0
    returns the image unchanged for every op. See the module docstring for the mapping to op arguments.
    """
    if name not in _OP_FNS:
        raise FewLabelsError(f"unknown RandAugment op {name!r}; valid ops: {', '.join(OPS)}")
    F._check(x)
    n = x.shape[0]
    m = torch.as_tensor(magnitude, dtype=torch.float64).cpu().expand(n).clamp(0.0, MAX_MAGNITUDE)
    s = torch.ones(n, dtype=torch.float64) if sign is None else torch.as_tensor(sign, dtype=torch.float64)
    return _OP_FNS[name](x, m, s.cpu().expand(n), fill)


@dataclass
class RandAugmentParams:
    """The random choices for one batch: all (num_ops, N) CPU tensors, layer-major."""

    op: torch.Tensor  # int64 index into OPS (Identity where not applied)
    magnitude: torch.Tensor  # float64 in [0, 10]
    sign: torch.Tensor  # float64 ±1


class RandAugment:
    """Batched RandAugment: ``RandAugment(num_ops=2, magnitude=9)(x)`` augments every image of x differently.

    Args:
        num_ops: ops applied in sequence to each image (the paper's N).
        magnitude: the paper's M on timm's 0..10 scale (see the module docstring for the exact op arguments).
        magnitude_std: std of Gaussian noise added to M per image and op (timm's ``mstd``), result clipped to
            [0, 10]; ``float('inf')`` draws M' uniformly from [0, M] instead.
        prob: probability that each of the num_ops layers is applied to an image (else it is left unchanged).
        fill: value for pixels uncovered by geometric ops, a number or one per channel, in the image's scale.
        ops: subset of :data:`OPS` to draw from (default: all 14).

    ``__call__(x, generator=None)``: x is (N, C, H, W) uint8 (or float in [0, 1]) on any device; all random draws
    are made on the CPU (or ``generator``'s device) through ``generator``, so the same seed gives the same output
    on any device. Per layer the batch is grouped by op: a loop over the (at most 14) ops, none over images.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9,
        magnitude_std: float = 0.0,
        prob: float = 1.0,
        fill: F.Fill = 0,
        ops: Sequence[str] = OPS,
    ) -> None:
        if isinstance(ops, str):
            ops = [o.strip() for o in ops.split(",") if o.strip()]
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise FewLabelsError(f"unknown RandAugment op(s) {unknown}; valid ops: {', '.join(OPS)}")
        if num_ops < 0 or not 0.0 <= magnitude <= MAX_MAGNITUDE or magnitude_std < 0 or not 0.0 <= prob <= 1.0:
            raise FewLabelsError(
                f"RandAugment needs num_ops ≥ 0, 0 ≤ magnitude ≤ 10, magnitude_std ≥ 0 and 0 ≤ prob ≤ 1; got "
                f"num_ops={num_ops}, magnitude={magnitude}, magnitude_std={magnitude_std}, prob={prob}"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.prob = float(prob)
        self.fill = fill
        self.ops = tuple(ops)
        self._op_index = torch.tensor([OPS.index(o) for o in self.ops])
        self._ws = F.Workspace()  # scratch for the regrouping copies, reused across calls (not thread-safe)

    def __repr__(self) -> str:
        return (
            f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, "
            f"prob={self.prob}, fill={self.fill})"
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> RandAugmentParams:
        """Draw the ops, magnitudes, signs and apply/skip choices for a batch of n images."""
        dev = generator.device if generator is not None else torch.device("cpu")
        shape = (self.num_ops, n)
        choice = torch.randint(len(self.ops), shape, generator=generator, device=dev).cpu()
        op = self._op_index[choice]
        applied = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).cpu() < self.prob
        op = torch.where(applied, op, 0)  # a skipped layer is the Identity
        m = torch.full(shape, self.magnitude, dtype=torch.float64)
        if math.isinf(self.magnitude_std):
            m = m * torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).cpu()
        elif self.magnitude_std > 0:
            noise = torch.randn(shape, generator=generator, device=dev, dtype=torch.float64).cpu()
            m = (m + self.magnitude_std * noise).clamp(0.0, MAX_MAGNITUDE)
        coin = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).cpu()
        sign = torch.where(coin < 0.5, -1.0, 1.0).to(torch.float64)
        return RandAugmentParams(op=op, magnitude=m, sign=sign)

    def apply(
        self, x: torch.Tensor, params: RandAugmentParams, workspace: F.Workspace | None = None
    ) -> torch.Tensor:
        """Apply drawn params to x (N, C, H, W); returns a new tensor, x is not modified."""
        F._check(x)
        ws = workspace if workspace is not None else self._ws
        cur, pos = self.apply_grouped(x, params, torch.arange(x.shape[0]), ws)
        if cur is x:
            return x.clone()
        return cur.index_select(0, to_device(torch.argsort(pos), x.device))

    def apply_grouped(
        self,
        x: torch.Tensor,
        params: RandAugmentParams,
        pos: torch.Tensor,
        workspace: F.Workspace | None = None,
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched core: x[k] is image pos[k] of the batch the params were drawn for.

        Per layer the batch is reordered so that images drawing the same op are contiguous (one index_select,
        a memcpy per image, skipped when already in order), each op runs once on its slice, and the result is
        written back into the slice. Returns (out, pos') with out[k] = augmented image pos'[k]; out is x itself
        when no image drew an op (or, with inplace, when x was already grouped), else a workspace tensor (valid
        until the next call with this workspace).
        index_copy_/index_put_ and torch.where are 10-20x slower than index_select on CPU for uint8 images, hence
        the permutation instead of a scatter per op.
        """
        ws = workspace if workspace is not None else F.Workspace()
        n = x.shape[0]
        cur = x
        pos = pos.to("cpu", torch.int64)
        for layer in range(params.op.shape[0]):
            op = params.op[layer, pos]  # (N,) op of each image of cur
            if bool((op == 0).all()):
                continue
            order = torch.argsort(op, stable=True)
            if (cur is x and not inplace) or not bool((order == torch.arange(n)).all()):
                dst = ws.get(f"ra{layer % 2}", x.shape, x.dtype, x.device)
                if dst.data_ptr() == cur.data_ptr():  # never read and write the same buffer
                    dst = ws.get(f"ra{(layer + 1) % 2}", x.shape, x.dtype, x.device)
                torch.index_select(cur, 0, to_device(order, x.device), out=dst)
                cur, pos, op = dst, pos[order], op[order]
            bounds = torch.bincount(op, minlength=len(OPS)).cumsum(0).tolist()
            m, s = params.magnitude[layer, pos], params.sign[layer, pos]
            for k in range(1, len(OPS)):  # skip 0 = Identity
                a, b = bounds[k - 1], bounds[k]
                if a < b:
                    cur[a:b] = _OP_FNS[OPS[k]](cur[a:b], m[a:b], s[a:b], self.fill)
        return cur, pos

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator))

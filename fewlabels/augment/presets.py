"""Named augmentation pipelines for uint8 batches: ``build_augment("strong", image_size=32)(x)``.

* ``none``: the identity (a copy).
* ``weak``: random translation by up to ``padding`` pixels (pad-and-crop, reflect padding; default
  image_size // 8, i.e. 4 px at 32 px, 28 px at 224 px) and a random horizontal flip — the standard CIFAR
  recipe (He et al. 2016) and the "weak" view of FixMatch (Sohn et al. 2020).
* ``strong``: weak + RandAugment(2, 9) (Cubuk et al. 2020) + Cutout of size image_size // 2 (DeVries & Taylor
  2017) — FixMatch's strong view.

The pipeline runs on the batch's device with per-image random choices and no Python loop over images. ``aug(x)``
returns uint8; ``aug.normalized(x, mean, std)`` returns the normalised float batch a training step consumes.

Two implementations give the same images for the same seed (the random choices are drawn once, in Python, by
the same code): on CPU uint8 batches, fused C kernels (:mod:`~fewlabels.augment.native`, compiled on first use)
take each image through every step while it is in the CPU cache; elsewhere (GPU, float input, no C compiler,
``use_native=False`` or ``FEWLABELS_NATIVE_AUGMENT=0``) batched PyTorch ops run each step once over the batch.
Speed against torchvision.transforms.v2 applied per image: benchmarks/results/augment_throughput.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fewlabels.augment import native
from fewlabels.augment.functional import Workspace
from fewlabels.augment.ops import (
    PAD_MODES,
    _randint,
    cutout_,
    flip_mask,
    normalize,
    normalize_scale_shift,
    pad_crop,
)
from fewlabels.augment.randaugment import RandAugment, RandAugmentParams
from fewlabels.errors import FewLabelsError
from fewlabels.utils import to_device

PRESETS: tuple[str, ...] = ("none", "weak", "strong")


@dataclass
class _Draws:
    """One batch's random choices, in batch order (CPU tensors; None where the step is off)."""

    offsets: torch.Tensor | None  # (N, 2) pad-crop offsets (dy, dx)
    flips: torch.Tensor | None  # (N,) bool
    params: RandAugmentParams | None
    centres: torch.Tensor | None  # (N, 2) Cutout centres (cy, cx)


def _fill_u8(fill: float | Sequence[float], c: int, what: str) -> torch.Tensor:
    """A fill value (number or one per channel) as the (C,) uint8 the PyTorch path would use."""
    f = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if f.numel() not in (1, c):
        raise FewLabelsError(f"{what} must be a number or {c} values, got {f.numel()}")
    if bool(((f < 0) | (f > 255)).any()):
        raise FewLabelsError(f"{what} {fill} is outside 0..255, the range of uint8 images")
    return f.expand(c).to(torch.uint8).contiguous()


@dataclass
class Augment:
    """A batch augmentation pipeline: pad-crop and flip → RandAugment → Cutout, each step optional.

    ``aug(x, generator=None, epoch=0, index=None) -> uint8``: x is (N, C, H, W) uint8 on any device; ``epoch``
    and ``index`` (dataset indices (N,)) matter only for the alternating flip. The same generator seed gives the
    same output. ``aug.normalized(x, mean, std, ...)`` returns the same images as normalised floats, fusing the
    conversion into the pipeline (what a training step wants).

    How the batch flows (one pass per arrow over N images, no loop over images): one ``index_select`` of row
    windows does translation, flip and the grouping of images by their first RandAugment op; each op then runs
    once on its contiguous slice; one more ``index_select`` regroups for the second op; Cutout is applied in place;
    a final ``index_select`` restores the input order. Intermediates live in a workspace kept by this object (a
    fresh multi-megabyte tensor costs more in page faults than most ops cost in arithmetic), so an Augment is not
    thread-safe: use one per thread or process.
    """

    name: str
    padding: int = 0
    pad_mode: str = "reflect"
    hflip: bool = False
    alternating_flip: bool = False
    randaugment: RandAugment | None = None
    cutout: int = 0
    cutout_fill: float | str = 0
    _ws: Workspace = field(default_factory=Workspace, repr=False, compare=False)

    use_native: bool | None = None  # None: the fused C kernels on CPU uint8 batches when they build (see native.py)

    def _draw(
        self, x: torch.Tensor, generator: torch.Generator | None, epoch: int, index: torch.Tensor | None
    ) -> _Draws:
        """All random choices for the batch, in a fixed order, so results do not depend on which steps run."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise FewLabelsError(f"augment expects a batch (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
        n = x.shape[0]
        offsets = _randint(2 * self.padding + 1, (n, 2), generator) if self.padding > 0 else None
        flips = None
        if self.hflip:
            flips = flip_mask(n, 0.5, generator, alternating=self.alternating_flip, epoch=epoch, index=index)
        params = self.randaugment.sample(n, generator) if self.randaugment is not None else None
        centres = None
        if self.cutout > 0:
            centres = torch.stack([_randint(x.shape[2], (n,), generator), _randint(x.shape[3], (n,), generator)], 1)
        return _Draws(offsets, flips, params, centres)

    def _run(self, x: torch.Tensor, d: _Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched PyTorch path. (out, pos): out[k] is the augmented image pos[k]; out is x itself when nothing
        was applied."""
        n = x.shape[0]
        offsets, flips, params, centres = d.offsets, d.flips, d.params, d.centres
        out, pos = x, torch.arange(n)
        if offsets is not None or flips is not None:
            # group the images by their first RandAugment op already here: the crop's gather reorders for free
            order = (torch.argsort(params.op[0], stable=True) if params is not None and params.op.shape[0] > 0
                     else pos)
            offsets = torch.zeros(n, 2, dtype=torch.int64) if offsets is None else offsets
            dst = self._ws.get("crop", x.shape, x.dtype, x.device)
            out = pad_crop(x, self.padding, offsets, self.pad_mode, flips, order=order, out=dst, workspace=self._ws)
            pos = order
        if params is not None:
            out, pos = self.randaugment.apply_grouped(out, params, pos, self._ws, inplace=out is not x)
        if centres is not None:
            if out is x:
                out = x.clone()
            cutout_(out, centres[pos], self.cutout, self.cutout_fill)
        return out, pos

    def uses_native(self, x: torch.Tensor) -> bool:
        """Whether a batch like x goes through the fused C kernels (CPU uint8, kernels built, not turned off)."""
        if self.use_native is False or x.device.type != "cpu" or x.dtype != torch.uint8 or x.ndim != 4:
            return False
        if self.pad_mode not in ("reflect", "zeros"):
            return False
        return native.library() is not None

    def _run_native(self, x: torch.Tensor, d: _Draws, out: torch.Tensor,
                    scale_shift: torch.Tensor | None = None) -> torch.Tensor:
        c, h, w = x.shape[1:]
        ra = d.params
        fill = _fill_u8(self.randaugment.fill if self.randaugment is not None else 0, c, "RandAugment fill")
        mean = isinstance(self.cutout_fill, str)
        if mean and self.cutout_fill != "mean":
            raise FewLabelsError(f"cutout fill must be a number, one per channel, or 'mean'; got {self.cutout_fill!r}")
        cfill = torch.zeros(c, dtype=torch.uint8) if mean else _fill_u8(self.cutout_fill, c, "cutout fill")
        return native.run(x, padding=self.padding, reflect=self.pad_mode == "reflect", offsets=d.offsets,
                          flips=d.flips, ops=ra.op if ra is not None else None,
                          magnitudes=ra.magnitude if ra is not None else None,
                          signs=ra.sign if ra is not None else None, fill=fill,
                          cutout=int(self.cutout) if d.centres is not None else 0, centres=d.centres, cutout_mean=mean,
                          cutout_fill=cfill, out=out, scale_shift=scale_shift)

    def _check_padding(self, x: torch.Tensor) -> None:
        h, w = x.shape[2:]
        if self.pad_mode == "reflect" and self.padding > 0 and (self.padding >= h or self.padding >= w):
            raise FewLabelsError(f"--padding {self.padding} (reflect) needs images larger than {self.padding} px, got "
                                 f"{h}x{w}: use --padding {min(h, w) - 1} or less")
        if self.cutout and int(self.cutout) >= min(h, w):  # a square as large as the image can blank all of it
            raise FewLabelsError(f"--cutout {int(self.cutout)} would cover whole {h}x{w} images: use --cutout "
                                 f"{max(1, min(h, w) // 2)} (half the image, the usual) or less")

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        epoch: int = 0,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_padding(x)
        d = self._draw(x, generator, epoch, index)
        if self.uses_native(x):
            return self._run_native(x, d, native.empty_batch(tuple(x.shape), torch.uint8))
        out, pos = self._run(x, d)
        if out is x:
            return x.clone()
        return out.index_select(0, to_device(torch.argsort(pos), x.device))

    def normalized(
        self,
        x: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        generator: torch.Generator | None = None,
        epoch: int = 0,
        index: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``normalize(aug(x), mean, std, dtype, out)``, with the final reordering done on uint8 in the workspace."""
        result = out
        self._check_padding(x)
        d = self._draw(x, generator, epoch, index)
        if dtype == torch.float32 and self.uses_native(x) and (result is None or native.can_write(result)):
            if result is None:
                result = native.empty_batch(tuple(x.shape), dtype)
            elif result.shape != x.shape or result.dtype != dtype:
                raise ValueError(f"out must be {dtype} of shape {tuple(x.shape)}, got {result.dtype} "
                                 f"{tuple(result.shape)}")
            return self._run_native(x, d, result, normalize_scale_shift(mean, std, x.shape[1]))
        out, pos = self._run(x, d)
        inverse = torch.argsort(pos)
        if out is not x or not bool((inverse == torch.arange(x.shape[0])).all()):
            dst = self._ws.get("final", x.shape, x.dtype, x.device)
            out = torch.index_select(out, 0, to_device(inverse, x.device), out=dst)
        return normalize(out, mean, std, dtype, out=result)


def build_augment(
    preset: str,
    *,
    image_size: int,
    padding: int | None = None,
    ra_num_ops: int = 2,
    ra_magnitude: float = 9,
    ra_mstd: float = 0.0,
    cutout: int | None = None,
    hflip: bool = True,
    alternating_flip: bool = False,
    pad_mode: str = "reflect",
    fill: float = 0,
    cutout_fill: float | str = 0,
) -> Augment:
    """Build a named pipeline (see the module docstring) for square images of side ``image_size``.

    padding: pad-crop translation range (default image_size // 8); cutout: Cutout side (default image_size // 2
    for strong, none for weak; 0 disables it); hflip: False for data where mirroring changes the label (digits, text);
    alternating_flip: airbench's every-other-epoch flip instead of a coin per image; fill: RandAugment's fill for
    uncovered pixels; cutout_fill: a value or "mean".
    """
    if preset not in PRESETS:
        raise FewLabelsError(f"unknown augmentation preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if pad_mode not in PAD_MODES:
        raise FewLabelsError(f"unknown padding mode {pad_mode!r}; valid modes: {', '.join(PAD_MODES)}")
    if image_size <= 0:
        raise FewLabelsError(f"image_size must be positive, got {image_size}")
    if preset == "none":
        return Augment(name="none")
    pad = image_size // 8 if padding is None else int(padding)
    if pad < 0:
        raise FewLabelsError(f"padding must be ≥ 0, got {pad}")
    if preset == "weak":
        return Augment(name="weak", padding=pad, pad_mode=pad_mode, hflip=hflip, alternating_flip=alternating_flip,
                       cutout=max(int(cutout or 0), 0), cutout_fill=cutout_fill)
    size = image_size // 2 if cutout is None else int(cutout)
    return Augment(
        name="strong",
        padding=pad,
        pad_mode=pad_mode,
        hflip=hflip,
        alternating_flip=alternating_flip,
        randaugment=RandAugment(ra_num_ops, ra_magnitude, ra_mstd, fill=fill),
        cutout=max(size, 0),
        cutout_fill=cutout_fill,
    )

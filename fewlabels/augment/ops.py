"""Batched flip, pad-and-crop, Cutout and normalisation, with per-image random choices and no loop over images.

Every op takes x of shape (N, C, H, W), uint8 or float, on any device, and returns a new tensor of the same
dtype and device. Random draws go through an optional ``generator`` (CPU, or any device: draws are made on the
generator's device and moved to the data), so the same seed gives the same output on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fewlabels.augment.functional import Workspace, _check
from fewlabels.errors import FewLabelsError
from fewlabels.utils import to_device

PAD_MODES = ("reflect", "zeros")


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n uniform [0, 1) draws, float64 on the CPU."""
    return torch.rand(n, generator=generator, device=_gen_device(generator), dtype=torch.float64).cpu()


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in [0, high), int64 on the CPU."""
    return torch.randint(high, shape, generator=generator, device=_gen_device(generator)).cpu()


# ---------------------------------------------------------------------------------------------------------- flips


def alternating_flip_mask(index: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    """airbench's alternating flip (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU").

    A fixed pseudo-random half of the dataset (chosen by hashing each image's dataset ``index`` with ``seed``) is
    flipped on even epochs and the other half on odd epochs, so every image is seen both ways within any two
    consecutive epochs instead of by chance. index: (N,) int; returns a (N,) bool CPU tensor.
    """
    # integer hash (the 32-bit "lowbias" finaliser), exact in int64: products stay below 2^63
    h = (index.to("cpu", torch.int64) + seed * 0x9E3779B1) & 0xFFFFFFFF
    h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    h = (((h >> 16) ^ h) * 0x45D9F3B) & 0xFFFFFFFF
    h = (h >> 16) ^ h
    return (h & 1).bool() ^ bool(epoch % 2)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where mask (N,) bool is true; the others are copied unchanged."""
    _check(x)
    mask = mask.to("cpu", torch.bool)
    if bool(mask.all()):
        return x.flip(3)
    return pad_crop(x, 0, torch.zeros(x.shape[0], 2, dtype=torch.int64), flip=mask)


def random_hflip(
    x: torch.Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    *,
    alternating: bool = False,
    epoch: int = 0,
    index: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Mirror each image with probability p, or with airbench's alternating scheme when ``alternating``.

    Alternating flips need each image's dataset ``index`` (N,) to know which half it belongs to; without it the
    position in the batch is used, which only alternates if the batches are not reshuffled between epochs.
    """
    return hflip(x, flip_mask(x.shape[0], p, generator, alternating=alternating, epoch=epoch, index=index, seed=seed))


def flip_mask(
    n: int,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    *,
    alternating: bool = False,
    epoch: int = 0,
    index: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The (N,) bool CPU mask of images to flip (see :func:`random_hflip`)."""
    if alternating:
        return alternating_flip_mask(torch.arange(n) if index is None else index, epoch, seed)
    return _rand(n, generator) < p


# ----------------------------------------------------------------------------------------------- pad-and-crop


def pad_crop(
    x: torch.Tensor,
    padding: int,
    offsets: torch.Tensor,
    mode: str = "reflect",
    flip: torch.Tensor | None = None,
    *,
    order: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """Pad every side by ``padding`` pixels and crop back to (H, W) at per-image offsets, optionally mirrored.

    offsets: (N, 2) integers (dy, dx) in [0, 2·padding]; (padding, padding) is the identity. mode: "reflect"
    (airbench; no artificial edges) or "zeros" (torchvision ``RandomCrop(padding=p)``). flip: optional (N,) bool;
    those images are mirrored left-right first (the same as mirroring the crop, since padding is symmetric).
    order: optional (N,) permutation; output image k is input image order[k] (lets a caller group images for
    later ops at no extra cost). out/workspace: optional preallocated output and scratch space.

    Only the columns are padded in memory: each output row is then one contiguous window of a padded row
    (vertical padding is handled by choosing which row, or a zero row), so the crop of the whole batch is a
    single ``index_select`` over overlapping row windows, i.e. a memcpy per row, with no per-pixel gather and
    no torch.where.
    """
    _check(x)
    if mode not in PAD_MODES:
        raise FewLabelsError(f"unknown padding mode {mode!r}; valid modes: {', '.join(PAD_MODES)}")
    n, c, h, w = x.shape
    p = int(padding)
    if mode == "reflect" and (p >= h or p >= w):
        raise FewLabelsError(f"reflect padding {p} needs images larger than {p} px, got {h}x{w}; use mode='zeros'")
    ws = workspace if workspace is not None else Workspace()
    dev = x.device
    flips = flip.to("cpu", torch.bool) if flip is not None else torch.zeros(n, dtype=torch.bool)
    fidx = flips.nonzero().flatten()
    nf = fidx.numel()
    wp = w + 2 * p
    # buf: N padded images, then padded mirrored copies of the F flipped ones, then one row of zeros
    # (the source of every row that falls in the vertical zero padding)
    buf = ws.get("pad", ((n + nf) * c * h * wp + wp,), x.dtype, dev)
    padded = buf[:-wp].view(n + nf, c, h, wp)
    if p == 0:
        padded[:n].copy_(x)
    elif mode == "reflect":
        # the reflected strips of x are slices of x mirrored: x[..., p:0:-1] == x.flip(3)[..., w-1-p : w-1]
        xf = ws.get("mirror", x.shape, x.dtype, dev)
        torch.ops.aten.flip.out(x, [3], out=xf)
        torch.cat([xf[..., w - 1 - p : w - 1], x, xf[..., 1 : p + 1]], 3, out=padded[:n])
    else:
        z = x.new_zeros(1, 1, 1, 1).expand(n, c, h, p)
        torch.cat([z, x, z], 3, out=padded[:n])
    if nf:
        # a mirrored padded image is the padded image with every row reversed (the padding is symmetric)
        sub = ws.get("flipped", (nf, c, h, wp), x.dtype, dev)
        torch.index_select(padded[:n], 0, to_device(fidx, dev), out=sub)
        torch.ops.aten.flip.out(sub, [3], out=padded[n:])
    buf[-wp:].zero_()
    # which padded image each input image is cut from, then in output order
    slot = torch.arange(n)
    slot[fidx] = n + torch.arange(nf)
    perm = torch.arange(n) if order is None else order.to("cpu", torch.int64)
    off = offsets.to("cpu", torch.int64).clamp(0, 2 * p)[perm]  # (N, 2)
    rows = torch.arange(h).view(1, h) + off[:, :1] - p  # (N, H) source row, may fall in the padding
    if mode == "reflect":
        rows = rows.abs()
        rows = torch.where(rows > h - 1, 2 * (h - 1) - rows, rows)
        valid = torch.ones_like(rows, dtype=torch.bool)
    else:
        valid = (rows >= 0) & (rows < h)
    plane = (slot[perm] * c).view(n, 1, 1) + torch.arange(c).view(1, c, 1)  # (N, C, 1)
    start = (plane * h + rows.clamp(0, h - 1).view(n, 1, h)) * wp + off[:, 1].view(n, 1, 1)  # (N, C, H)
    start = torch.where(valid.view(n, 1, h), start, (n + nf) * c * h * wp)  # the zero row
    windows = buf.as_strided((buf.numel() - w + 1, w), (1, 1))  # the w-long window at every offset
    if out is None:
        out = torch.empty_like(x)
    torch.index_select(windows, 0, to_device(start.view(-1), dev), out=out.view(n * c * h, w))
    return out


def random_pad_crop(
    x: torch.Tensor, padding: int, mode: str = "reflect", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels per image (RandomCrop(size, padding) on a whole batch)."""
    return pad_crop(x, padding, _randint(2 * int(padding) + 1, (x.shape[0], 2), generator), mode)


# -------------------------------------------------------------------------------------------------------- Cutout


def cutout(
    x: torch.Tensor, centres: torch.Tensor, size: int, fill: float | Sequence[float] | str = 0
) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017, "Improved Regularization of CNNs with Cutout"): one size×size square per image.

    centres: (N, 2) integer (cy, cx); the square [cy - size//2, cy - size//2 + size) × (same in x) is clipped at
    the border, so near an edge less than size² pixels are covered. fill: a number (or one per channel) in the
    image's scale, or "mean" for each image's own per-channel mean.
    """
    _check(x)
    return cutout_(x.clone(), centres, size, fill)


def cutout_(
    x: torch.Tensor, centres: torch.Tensor, size: int, fill: float | Sequence[float] | str = 0
) -> torch.Tensor:
    """In-place :func:`cutout` (x is modified and returned)."""
    c, h, w = x.shape[1:]
    dev = x.device
    ctr = to_device(centres, dev, torch.int64)
    top = ctr[:, :1] - size // 2  # (N, 1)
    left = ctr[:, 1:] - size // 2
    rows = torch.arange(h, device=dev).view(1, h)
    cols = torch.arange(w, device=dev).view(1, w)
    in_rows = ((rows >= top) & (rows < top + size)).to(x.dtype)  # (N, H) 0/1
    in_cols = ((cols >= left) & (cols < left + size)).to(x.dtype)  # (N, W) 0/1
    # (N, 1, H, W) 0/1 box as an outer product; blending by arithmetic is ~10x faster on CPU than
    # masked_fill/torch.where, and the two terms never overlap, so uint8 cannot overflow
    box = in_rows.view(-1, 1, h, 1) * in_cols.view(-1, 1, 1, w)
    if isinstance(fill, str):
        if fill != "mean":
            raise FewLabelsError(f"cutout fill must be a number, one per channel, or 'mean'; got {fill!r}")
        value = x.float().mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1), before the box is cut
        value = value.round_().to(x.dtype) if x.dtype == torch.uint8 else value.to(x.dtype)
    else:
        value = to_device(torch.as_tensor(fill, dtype=torch.float32).flatten(), dev, x.dtype).view(1, -1, 1, 1)
        if value.shape[1] not in (1, c):
            raise FewLabelsError(f"cutout fill must be a number or {c} values, got {value.shape[1]}")
    x.mul_(1 - box)
    if bool((value != 0).any()):
        x.add_(box * value)
    return x


def random_cutout(
    x: torch.Tensor,
    size: int,
    fill: float | Sequence[float] | str = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cutout with a uniformly random centre per image (anywhere in the image, so boxes may be clipped)."""
    n, _, h, w = x.shape
    cy = _randint(h, (n,), generator)
    cx = _randint(w, (n,), generator)
    return cutout(x, torch.stack([cy, cx], 1), size, fill)


# ------------------------------------------------------------------------------------------------- normalisation


def normalize_scale_shift(mean: Sequence[float], std: Sequence[float], c: int, div: float = 255.0) -> torch.Tensor:
    """(2, C) float32 (scale, shift) with x·scale + shift = (x/div − mean)/std: what :func:`normalize` applies, and
    what the native kernels are given, so both paths produce identical floats."""
    m = torch.as_tensor(mean, dtype=torch.float32).flatten().expand(c)
    s = torch.as_tensor(std, dtype=torch.float32).flatten().expand(c)
    return torch.stack([1.0 / (div * s), -m / s])


def normalize(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (or [0, 1] float) batch → (x/255 − mean)/std in ``dtype`` (float32, bfloat16, ...).

    mean/std are per channel on the 0..1 scale (e.g. CIFAR-10: (0.4914, 0.4822, 0.4465), (0.2470, 0.2435,
    0.2616)); for uint8 the 1/255 is folded into the scale: x·(1/(255·std)) − mean/std. out: optional
    preallocated result (shape of x, dtype ``dtype``), e.g. two buffers alternated by a training loop: a fresh
    float batch costs page faults on first touch (~19 ms for 64×3×224×224 on a 2-core VM, more than the
    arithmetic).
    """
    _check(x)
    scale, shift = normalize_scale_shift(mean, std, x.shape[1], 255.0 if x.dtype == torch.uint8 else 1.0)
    scale, shift = to_device(scale.view(1, -1, 1, 1), x.device), to_device(shift.view(1, -1, 1, 1), x.device)
    if out is None:
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} of shape {tuple(x.shape)}, got {out.dtype} {tuple(out.shape)}")
    # convert, then two in-place passes, in blocks of ~1M values so that a block is still in cache for the second
    # and third pass (measured 24 vs 31 ms for 64×3×224×224 on one core). Mixed-dtype kernels (uint8 · float)
    # are ~3x slower on CPU than a conversion followed by float ops.
    n = x.shape[0]
    block = n if x.device.type != "cpu" else max(1, (1 << 20) // max(1, x[0].numel()))
    for i in range(0, n, block):  # cache blocking: 1 block for a 32 px batch of 256, 11 for 64 images of 224 px
        o = out[i : i + block] if dtype == torch.float32 else torch.empty_like(out[i : i + block], dtype=torch.float32)
        o.copy_(x[i : i + block]).mul_(scale).add_(shift)
        if o.data_ptr() != out[i : i + block].data_ptr():
            out[i : i + block].copy_(o)
    return out

"""Batched image ops with one parameter per image: the kernels behind RandAugment and the preset pipelines.

Every function takes a batch ``x`` of shape (N, C, H, W), C = 1 or 3, either uint8 (values 0..255) or floating
point (values 0..1), and per-image parameters as tensors of shape (N,) (a Python number is broadcast to every
image). The result has the dtype and device of ``x``; the input is never modified. No function loops over images.

Semantics follow ``torchvision.transforms.v2.functional`` on tensors (the reference the tests compare against):

* colour ops compute in float32 and, for uint8, clamp to [0, 255] and truncate like torchvision's ``.to(uint8)``;
  for uint8 the result equals torchvision's bit for bit except in rare float-rounding ties;
* geometric ops sample with nearest neighbour and fill uncovered pixels with ``fill`` (a number or one value per
  channel, in the image's own scale), with torchvision's sign conventions: ``rotate`` by +θ turns the content
  counter-clockwise, ``translate_x`` by +t moves it right, ``shear_x`` by m maps output (x, y) to input
  (x + m·y, y) about the top-left corner, as timm's PIL ``(1, m, 0, 0, 1, 0)`` and torchvision's RandAugment do.

Translations and shears move whole rows (or columns) by integer amounts, so they are implemented as one
``index_select`` of row windows out of a padded copy (a memcpy per row) instead of a per-pixel ``grid_sample``;
only ``rotate``/``affine`` gather pixel by pixel. One deliberate difference: when a sheared row's shift
m·(y + ½) is exactly half-way between two integers (e.g. m = 0.12, y = 12), torchvision rounds each pixel
half-to-even and duplicates every other pixel of that row; here the whole row moves by round(m·(y + ½)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fewlabels.utils import to_device

Fill = float | Sequence[float]


class Workspace:
    """Scratch tensors reused from one batch to the next, keyed by name.

    Big intermediates (a padded batch, a permuted copy) are allocated once instead of per batch: a fresh
    multi-megabyte CPU tensor comes from mmap and pays a page fault per 4 kB page on first touch, measured at
    0.4-2 ms per MB on a 2-core VM, i.e. more than the arithmetic of most ops. Not thread-safe: one per user.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= int(d)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:numel].view(*shape)


# --------------------------------------------------------------------------------------------------------- helpers


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a batch of shape (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")


def _bound(x: torch.Tensor) -> float:
    """Largest pixel value: 255 for uint8, 1.0 for floating point."""
    return 255.0 if x.dtype == torch.uint8 else 1.0


def _per_image(v: torch.Tensor | float, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A per-image parameter (number or (N,) tensor) as an (N, 1, 1, 1) tensor on x's device."""
    t = torch.as_tensor(v, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"per-image parameter must have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return to_device(t, x.device).view(-1, 1, 1, 1)


def _factors(factor: torch.Tensor | float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, 1 − f) as (N, 1, 1, 1) float32, with 1 − f formed in float64 as torchvision does with Python floats."""
    f64 = torch.as_tensor(factor, dtype=torch.float64)
    return _per_image(f64, x), _per_image(1.0 - f64, x)


def _work(x: torch.Tensor) -> torch.Tensor:
    """A float32 copy to compute on (always a copy, so in-place ops never touch the caller's tensor)."""
    return x.to(torch.float32, copy=True)


def _finish(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Clamp to the valid range and cast back to like's dtype (uint8: truncation, as torchvision does).

    For uint8 the float is truncated to int16 first and clamped there: the same result as clamp-then-truncate
    for |y| < 32768 (always the case here), but float32→int16→uint8 plus an int16 clamp costs ~0.5 ns/value on
    CPU against ~1.5 ns for a float clamp and the direct float→uint8 cast, which is not vectorised.
    """
    if like.dtype == torch.uint8:
        return y.to(torch.int16).clamp_(0, 255).to(torch.uint8)
    return y.clamp_(0.0, _bound(like)).to(like.dtype)


def _gray(xf: torch.Tensor, integer: bool) -> torch.Tensor:
    """ITU-R 601 luma, (N, 3, H, W) float → (N, 1, H, W); floored for uint8 images like torchvision/PIL."""
    r, g, b = xf.unbind(1)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)
    return gray.floor_() if integer else gray


def _apply_fill(out: torch.Tensor, valid: torch.Tensor, fill: Fill) -> torch.Tensor:
    """out where valid (N, 1, H, W) bool, else fill; arithmetic instead of torch.where (10x faster on CPU)."""
    keep = valid.to(out.dtype)
    out = out.mul_(keep)
    if isinstance(fill, (int, float)) and fill == 0:
        return out
    return out.add_((1 - keep) * _fill_tensor(fill, out))  # the two terms never overlap: no overflow


def _fill_tensor(fill: Fill, x: torch.Tensor) -> torch.Tensor:
    """fill as a (1, C, 1, 1) tensor of x's dtype on x's device."""
    f = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if f.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill must be a number or {x.shape[1]} values, got {f.numel()}")
    return to_device(f.expand(x.shape[1]), x.device, x.dtype).view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------------------ colour ops


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Brightness (PIL ImageEnhance.Brightness): blend with black, out = f·x. factor 1 is the identity."""
    _check(x)
    return _finish(_work(x).mul_(_per_image(factor, x)), x)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """RandAugment's "Color" (PIL ImageEnhance.Color): blend with the grey image, out = f·x + (1-f)·gray.

    Grayscale images (C = 1) are returned unchanged, as PIL and torchvision do.
    """
    _check(x)
    if x.shape[1] == 1:
        return x.clone()
    f, one_minus_f = _factors(factor, x)
    xf = _work(x)
    gray = _gray(xf, x.dtype == torch.uint8)  # (N, 1, H, W)
    return _finish(xf.mul_(f).addcmul_(gray, one_minus_f), x)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Contrast (PIL ImageEnhance.Contrast): blend with the image's mean grey level, out = f·x + (1-f)·mean."""
    _check(x)
    f, one_minus_f = _factors(factor, x)
    xf = _work(x)
    gray = _gray(xf, x.dtype == torch.uint8) if x.shape[1] == 3 else xf
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return _finish(xf.mul_(f).add_(mean.mul_(one_minus_f)), x)  # addcmul_ with two (N,1,1,1) operands is 8x slower


def adjust_sharpness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Sharpness (PIL ImageEnhance.Sharpness): blend with a 3×3 smoothed image, out = blur + f·(x - blur).

    The smoothing kernel is [[1,1,1],[1,5,1],[1,1,1]]/13 and, as in PIL/torchvision, border pixels are left
    unchanged. Computed as (3×3 box sum + 4·centre)/13 with separable sums (exact in float32 for 8-bit data, so
    the rounded blur equals torchvision's conv2d result) instead of a depthwise conv.
    """
    _check(x)
    h, w = x.shape[2:]
    if h <= 2 or w <= 2:
        return x.clone()
    _, one_minus_f = _factors(factor, x)
    xf = _work(x)
    rows = torch.add(xf[:, :, :-2], xf[:, :, 1:-1]).add_(xf[:, :, 2:])  # (N, C, H-2, W): vertical 3-sums
    box = torch.add(rows[..., :-2], rows[..., 1:-1]).add_(rows[..., 2:])  # (N, C, H-2, W-2): 3×3 sums
    centre = xf[:, :, 1:-1, 1:-1]  # view into xf: the blend below writes the interior in place
    blur = box.add_(centre, alpha=4.0).div_(13.0)
    if x.dtype == torch.uint8:
        blur.round_()
    # x + (1-f)·(blur - x), the same expression (and rounding) as torchvision
    centre.add_(blur.sub_(centre).mul_(one_minus_f))
    return _finish(xf, x)


def posterize(x: torch.Tensor, bits: torch.Tensor | int) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each channel (0..8 per image; 8 is the identity)."""
    _check(x)
    b = _per_image(bits, x, torch.int64).clamp(0, 8)
    if x.dtype == torch.uint8:
        mask = ((255 << (8 - b)) & 255).to(torch.uint8)  # (N, 1, 1, 1)
        return x & mask
    levels = (2**b).to(x.dtype)
    keep = (b >= 8).to(x.dtype)  # images keeping 8 bits are returned exactly (float posterize(8) would quantise)
    y = (x * levels).floor_().clamp_(min=0).minimum(levels - 1).div_(levels)
    return y.mul_(1 - keep).addcmul_(x, keep)


def solarize(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Invert every pixel value ≥ threshold (per image, in the image's scale; above the max is the identity)."""
    _check(x)
    if x.dtype == torch.uint8:
        # x ≥ t ⇔ x ≥ ceil(t) for integer x. torch.where and comparisons against a broadcast (N, 1, 1, 1) operand
        # are ~10x slower on CPU than same-shape uint8 ops, so: compare with an expanded copy of the threshold,
        # turn the mask into 0/255 and XOR (255 ^ v = 255 - v).
        t = torch.as_tensor(threshold, dtype=torch.float64).expand(x.shape[0]).ceil().clamp(0, 256)
        on = _per_image(torch.where(t <= 255, 255, 0), x, torch.uint8)  # thresholds of 256 change nothing
        t8 = _per_image(t.clamp(max=255), x, torch.uint8).expand_as(x).contiguous()
        return x ^ torch.ge(x, t8).view(torch.uint8).mul_(on)
    t = _per_image(threshold, x, x.dtype).expand_as(x).contiguous()
    m = torch.ge(x, t).to(x.dtype)  # 1 where inverted; x·(1 − m) + (1 − x)·m is exact for m ∈ {0, 1}
    return (x * (1 - m)).addcmul_(1 - x, m)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image linearly so its min maps to 0 and its max to the top of the range."""
    _check(x)
    bound = _bound(x)
    lo = x.amin(dim=(2, 3), keepdim=True).float()  # (N, C, 1, 1); on uint8 directly: 5x faster than on float
    hi = x.amax(dim=(2, 3), keepdim=True).float()
    flat = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / bound)
    lo = lo.masked_fill_(flat, 0.0)
    inv_scale = inv_scale.masked_fill_(flat, 1.0)  # constant channels stay as they are
    return _finish(_work(x).sub_(lo).div_(inv_scale), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel, with PIL's lookup table (as torchvision).

    Batched: the (N·C, 256) histograms come from one scatter_add, the LUTs from one cumsum, and the lookup is one
    gather. Float images are quantised to 8 bits for the histogram and returned as float.
    """
    _check(x)
    if x.dtype != torch.uint8:
        return equalize(x.mul(255.999).clamp_(0, 255).to(torch.uint8)).to(x.dtype).div_(255.0)
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()  # (NC, HW)
    hist = torch.zeros(n * c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(1, flat, torch.ones(1, 1, dtype=torch.int32, device=x.device).expand_as(flat))
    cum = hist.cumsum(1, dtype=torch.int32)  # (NC, 256)
    # PIL: step = (#pixels not at the image's maximum value) // 255; lut[k] = (cum[k-1] + step//2) // step
    top = hist.gather(1, cum.argmax(1, keepdim=True))  # count of the maximum value present
    step = (h * w - top).div_(255, rounding_mode="floor")  # (NC, 1)
    lut = (cum[:, :-1] + step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(n * c, 1), lut], 1)  # (NC, 256)
    # step 0 (a near-constant channel) is left unchanged: give it the identity table (no torch.where on pixels)
    lut = torch.where(step == 0, torch.arange(256, dtype=lut.dtype, device=x.device), lut).to(torch.uint8)
    return lut.gather(1, flat).view(n, c, h, w)


# --------------------------------------------------------------------------------------------------- geometric ops


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: Fill = 0) -> torch.Tensor:
    """Nearest-neighbour warp with one inverse affine matrix per image.

    matrix: (N, 2, 3), mapping output to input pixel coordinates measured from the image centre (torchvision's
    ``_get_inverse_affine_matrix`` convention). Implemented as one gather over all images (no grid_sample, no
    float copy of the image): the source index of every output pixel is round-half-even of the mapped
    coordinate, the rounding grid_sample(mode="nearest") uses.
    """
    _check(x)
    n, c, h, w = x.shape
    dev = x.device
    m = to_device(matrix, dev, torch.float32)
    # torchvision normalises the grid by (W/2, H/2) and grid_sample un-normalises it; this is the same map
    xs = torch.arange(w, device=dev, dtype=torch.float32).sub_((w - 1) / 2).view(1, 1, w)  # (1, 1, W)
    ys = torch.arange(h, device=dev, dtype=torch.float32).sub_((h - 1) / 2).view(1, h, 1)  # (1, H, 1)
    a = m.reshape(n, 6, 1, 1).unbind(1)  # six (N, 1, 1) matrix entries, row-major
    # source column/row of every output pixel: a (N, 1, W) row term plus an (N, H, 1) column term, one pass each
    sx = (a[0] * xs).add(a[1] * ys + (a[2] + (w - 1) / 2)).round_()  # (N, H, W)
    sy = (a[3] * xs).add(a[4] * ys + (a[5] + (h - 1) / 2)).round_()
    cx, cy = sx.clamp(0, w - 1), sy.clamp(0, h - 1)
    valid = (cx == sx).logical_and_(cy == sy)  # inside the image iff clamping changed nothing
    idx = cy.mul_(w).add_(cx).to(torch.int64).view(n, 1, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx.expand(n, c, h * w)).view(n, c, h, w)
    return _apply_fill(out, valid.unsqueeze(1), fill)


def rotate(x: torch.Tensor, angle: torch.Tensor | float, fill: Fill = 0) -> torch.Tensor:
    """Rotate each image about its centre by angle[i] degrees (positive: counter-clockwise), nearest, no expand."""
    _check(x)
    a = torch.deg2rad(torch.as_tensor(angle, dtype=torch.float64).expand(x.shape[0]))
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    # inverse map = rotation by -θ in image coordinates (y down), as torchvision.rotate
    m = torch.stack([cos, -sin, zero, sin, cos, zero], 1).view(-1, 2, 3)
    return affine(x, m.float(), fill)


def _pad_value(buf_part: torch.Tensor, fill: Fill, x: torch.Tensor) -> None:
    if isinstance(fill, (int, float)):
        buf_part.fill_(fill)
    else:
        buf_part.copy_(_fill_tensor(fill, x).expand_as(buf_part))


def _shift_rows(x: torch.Tensor, shift: torch.Tensor, fill: Fill) -> torch.Tensor:
    """out[n, c, i, j] = x[n, c, i, j + shift[n, i]], fill where j + shift falls outside the row.

    shift: (N, H) integer tensor. Each output row is a contiguous window of a fill-padded copy, so the whole
    batch is one index_select over overlapping row windows (as_strided), i.e. a memcpy per row.
    """
    n, c, h, w = x.shape
    shift = shift.to("cpu", torch.int64)
    s = int(min(w, int(shift.abs().max()))) if shift.numel() else 0
    if s == 0:
        return x.clone()
    shift = shift.clamp(-s, s)  # a shift of ≥ W already gives a row of fill
    wp = w + 2 * s
    buf = x.new_empty(n, c, h, wp)  # (N, C, H, W + 2S): x in the middle, fill on both sides
    buf[..., s : s + w] = x
    _pad_value(buf[..., :s], fill, x)
    _pad_value(buf[..., s + w :], fill, x)
    plane = (torch.arange(n * c) * h).view(n, c, 1)  # first row index of each (image, channel) plane
    start = (plane + torch.arange(h).view(1, 1, h)) * wp + s + shift.view(n, 1, h)  # (N, C, H) window starts
    windows = buf.view(-1).as_strided((buf.numel() - w + 1, w), (1, 1))
    return windows.index_select(0, to_device(start.view(-1), x.device)).view(n, c, h, w)


def _shift_cols(x: torch.Tensor, shift: torch.Tensor, fill: Fill) -> torch.Tensor:
    """out[n, c, i, j] = x[n, c, i + shift[n, j], j]: the column version of _shift_rows, via a transpose."""
    return _shift_rows(x.transpose(2, 3), shift, fill).transpose(2, 3).contiguous()


def _shift_image_rows(x: torch.Tensor, shift: torch.Tensor, fill: Fill) -> torch.Tensor:
    """out[n, c, i, :] = x[n, c, i + shift[n], :]: a vertical translation, gathering whole rows."""
    n, c, h, w = x.shape
    shift = shift.to("cpu", torch.int64)
    s = int(min(h, int(shift.abs().max()))) if shift.numel() else 0
    if s == 0:
        return x.clone()
    shift = shift.clamp(-s, s)
    hp = h + 2 * s
    buf = x.new_empty(n, c, hp, w)  # (N, C, H + 2S, W): fill rows above and below
    buf[:, :, s : s + h] = x
    _pad_value(buf[:, :, :s], fill, x)
    _pad_value(buf[:, :, s + h :], fill, x)
    start = (torch.arange(n * c) * hp).view(n, c, 1) + s + shift.view(n, 1, 1) + torch.arange(h).view(1, 1, h)
    return buf.view(-1, w).index_select(0, to_device(start.view(-1), x.device)).view(n, c, h, w)


def translate_x(x: torch.Tensor, pixels: torch.Tensor | float, fill: Fill = 0) -> torch.Tensor:
    """Move each image's content right by pixels[i] (rounded to whole pixels; negative: left)."""
    _check(x)
    t = torch.as_tensor(pixels, dtype=torch.float64).expand(x.shape[0]).round().long()
    return _shift_rows(x, (-t).view(-1, 1).expand(-1, x.shape[2]), fill)


def translate_y(x: torch.Tensor, pixels: torch.Tensor | float, fill: Fill = 0) -> torch.Tensor:
    """Move each image's content down by pixels[i] (rounded to whole pixels; negative: up)."""
    _check(x)
    t = torch.as_tensor(pixels, dtype=torch.float64).expand(x.shape[0]).round().long()
    return _shift_image_rows(x, -t, fill)


def shear_x(x: torch.Tensor, factor: torch.Tensor | float, fill: Fill = 0) -> torch.Tensor:
    """Horizontal shear about the top-left corner: output (x, y) samples input (x + m·y, y).

    Matches PIL's ``transform(AFFINE, (1, m, 0, 0, 1, 0))`` (timm) and torchvision's RandAugment ShearX
    (``affine(shear=[atan(m) in degrees, 0], center=[0, 0])``); with nearest sampling every row moves by a whole
    number of pixels, round(m·(y + ½)).
    """
    _check(x)
    m = torch.as_tensor(factor, dtype=torch.float64).expand(x.shape[0])
    rows = torch.arange(x.shape[2], dtype=torch.float64) + 0.5
    return _shift_rows(x, (m.view(-1, 1) * rows).round().long(), fill)  # (N, H) shift per row


def shear_y(x: torch.Tensor, factor: torch.Tensor | float, fill: Fill = 0) -> torch.Tensor:
    """Vertical shear about the top-left corner: output (x, y) samples input (x, y + m·x)."""
    _check(x)
    m = torch.as_tensor(factor, dtype=torch.float64).expand(x.shape[0])
    cols = torch.arange(x.shape[3], dtype=torch.float64) + 0.5
    return _shift_cols(x, (m.view(-1, 1) * cols).round().long(), fill)  # (N, W) shift per column

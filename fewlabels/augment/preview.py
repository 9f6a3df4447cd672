"""Look at what an augmentation does: a PNG grid with one row per image, the original first, then augmented views."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..utils import atomic_write_bytes


def preview_grid(
    images: torch.Tensor,
    augment: Callable[..., torch.Tensor],
    views: int,
    path: str | Path,
    seed: int = 0,
    min_cell: int = 96,
    gap: int = 2,
) -> Path:
    """Write a (N rows × (1 + views) columns) PNG grid of images (N, C, H, W) uint8 and their augmented views.

    Each view is ``augment(images, generator=g)`` with one seeded CPU generator, so the grid is reproducible.
    Cells are upscaled with nearest neighbour by an integer factor to at least ``min_cell`` px (a 32 px image
    becomes 96 px) and separated by ``gap`` white pixels. Returns the path written.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 (N, C, H, W) images, C = 1 or 3; got {images.dtype} {tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    columns = [images] + [augment(images, generator=g) for _ in range(views)]  # each (N, C, H, W)
    n, c, h, w = images.shape
    scale = max(1, math.ceil(min_cell / max(h, w)))
    ch, cw = h * scale, w * scale
    grid = np.full((n * (ch + gap) - gap, len(columns) * (cw + gap) - gap, 3), 255, dtype=np.uint8)
    for j, col in enumerate(columns):  # a handful of columns, for a picture: not a hot path
        big = col.detach().cpu().repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (N, C, ch, cw)
        big = big.expand(n, 3, ch, cw) if c == 1 else big
        cells = big.permute(0, 2, 3, 1).numpy()  # (N, ch, cw, 3)
        for i in range(n):
            grid[i * (ch + gap) : i * (ch + gap) + ch, j * (cw + gap) : j * (cw + gap) + cw] = cells[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())  # a reader never sees half a PNG; an old one is replaced whole
    return path

"""`fewlabels augment preview`: a PNG grid, N images × K augmented views, for any dataset and preset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import command_config, opt
from ..data import load_dataset
from .common import NO_FLIP_SOURCES


@dataclass
class PreviewCommand:
    """Write a grid of augmented views: one row per image, the original first."""

    data: str = opt("digits", "dataset name or image folder")
    data_root: str | None = opt(None, "where torchvision datasets live")
    cache_dir: str | None = opt(None, "decoded-image cache (default ~/.cache/fewlabels/cache)")
    bad_images: str = opt("stop", "on an unreadable image: stop, or skip it (with a count)", choices=("stop", "skip"))
    image_size: int | None = opt(None, "resize images of an image folder to this size", ge=1)
    preset: str = opt("strong", "augmentation preset", choices=("none", "weak", "strong"))
    images: int = opt(8, "rows: images taken from the training set, evenly spaced", ge=1)
    views: int = opt(6, "augmented views per image", ge=1)
    ra_num_ops: int = opt(2, "RandAugment ops per image", ge=0)
    ra_magnitude: float = opt(9.0, "RandAugment magnitude M (0-10)", ge=0, le=10)
    hflip: bool | None = opt(None, "random flips (default: on, except for digit sets)")
    seed: int = opt(0, "random seed")
    out: str = opt("augment_preview.png", "PNG file to write")
    quiet: bool = opt(False, "print nothing")


def augment_preview(cfg: PreviewCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Write a PNG grid of augmented views (one row per image, the original first); returns {"path"}."""
    from ..augment import build_augment, preview_grid

    cfg = command_config(PreviewCommand, cfg, kwargs)
    ds = load_dataset(cfg.data, root=cfg.data_root, cache_dir=cfg.cache_dir, bad_images=cfg.bad_images,
                      image_size=cfg.image_size)
    n = len(ds.train)
    idx = torch.linspace(0, n - 1, min(cfg.images, n)).long()
    hflip = cfg.hflip if cfg.hflip is not None else cfg.data not in NO_FLIP_SOURCES
    # the height sets the padding and Cutout sizes, as in training (engine.loop)
    aug = build_augment(cfg.preset, image_size=ds.train.images.shape[-2], ra_num_ops=cfg.ra_num_ops,
                        ra_magnitude=cfg.ra_magnitude, hflip=hflip)
    path = preview_grid(ds.train.images[idx], aug, cfg.views, Path(cfg.out), seed=cfg.seed)
    if not cfg.quiet:
        print(f"wrote {path}: {len(idx)} images × {cfg.views} '{cfg.preset}' views")
    return {"path": str(path)}


COMMANDS = [("augment preview", PreviewCommand, augment_preview, "PNG grid of augmented views of a dataset")]

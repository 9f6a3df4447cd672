"""`fewlabels augment preview`: a PNG grid, N images × K augmented views, for any dataset and preset."""

from __future__ import annotations

from typing import Any

import torch

from ..config import Options, group, opt
from ..data import load_dataset
from ..data.prepare import Source
from ..engine.config import Augment, Seed
from ..runs import output_file
from .common import NO_FLIP_SOURCES, Run


@group
class Preview:
    """The size of the grid."""

    images: int = opt(8, "rows: images taken from the training set, evenly spaced", ge=1, le=256)
    views: int = opt(6, "augmented views per image", ge=1, le=64)


class PreviewCommand(Options):
    """Write a grid of augmented views: one row per image, the original first."""

    groups = (Source, Preview, Augment, Seed, Run)
    hide = ("mean", "std", "alternating_flip", "mixup", "cutmix", "mix_prob", "mix_per_image")
    defaults = {"augment": "strong", "out": "augment_preview.png"}
    renamed = {"preset": "augment"}


def augment_preview(cfg: PreviewCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Write a PNG grid of augmented views (one row per image, the original first); returns {"path"}."""
    from ..augment import build_augment, preview_grid

    cfg = PreviewCommand.build(cfg, kwargs)
    out = output_file(cfg.out, cfg.overwrite, (".png",))
    ds = load_dataset(cfg.data, root=cfg.data_root, cache_dir=cfg.cache_dir, bad_images=cfg.bad_images,
                      image_size=cfg.image_size)
    n = len(ds.train)
    idx = torch.linspace(0, n - 1, min(cfg.images, n)).long()
    hflip = cfg.hflip if cfg.hflip is not None else cfg.data not in NO_FLIP_SOURCES
    # the height sets the padding and Cutout sizes, as in training (engine.loop)
    aug = build_augment(cfg.augment, image_size=ds.train.images.shape[-2], ra_num_ops=cfg.ra_num_ops,
                        ra_magnitude=cfg.ra_magnitude, hflip=hflip, padding=cfg.padding, cutout=cfg.cutout)
    path = preview_grid(ds.train.images[idx], aug, cfg.views, out, seed=cfg.seed)
    if not cfg.quiet:
        print(f"wrote {path}: {len(idx)} images × {cfg.views} '{cfg.augment}' views")
    return {"path": str(path)}

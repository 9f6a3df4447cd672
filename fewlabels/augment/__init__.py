"""Batched, device-agnostic image augmentation: every op draws its own random choices for each image of a batch
without a Python loop over images.

* :mod:`~fewlabels.augment.randaugment`: RandAugment (Cubuk et al. 2020) with the paper's 14 ops;
* :mod:`~fewlabels.augment.ops`: flips (incl. airbench's alternating flip), pad-and-crop, Cutout, normalise;
* :mod:`~fewlabels.augment.mix`: CutMix and MixUp with soft targets;
* :mod:`~fewlabels.augment.presets`: ``build_augment("none" | "weak" | "strong", image_size=...)``;
* :mod:`~fewlabels.augment.functional`: the per-op kernels with one parameter per image;
* :mod:`~fewlabels.augment.preview`: a PNG grid of augmented views.
"""

from fewlabels.augment.mix import (
    Mixer,
    box_lam,
    box_mask,
    cutmix,
    mixup,
    mixup_target,
    rand_bbox,
    sample_beta,
    smooth_targets,
)
from fewlabels.augment.ops import (
    PAD_MODES,
    alternating_flip_mask,
    cutout,
    flip_mask,
    hflip,
    normalize,
    pad_crop,
    random_cutout,
    random_hflip,
    random_pad_crop,
)
from fewlabels.augment.presets import PRESETS, Augment, build_augment
from fewlabels.augment.preview import preview_grid
from fewlabels.augment.randaugment import OPS, RandAugment, RandAugmentParams, apply_op

__all__ = [
    "OPS",
    "PAD_MODES",
    "PRESETS",
    "Augment",
    "Mixer",
    "RandAugment",
    "RandAugmentParams",
    "alternating_flip_mask",
    "apply_op",
    "box_lam",
    "box_mask",
    "build_augment",
    "cutmix",
    "cutout",
    "flip_mask",
    "hflip",
    "mixup",
    "mixup_target",
    "normalize",
    "pad_crop",
    "preview_grid",
    "rand_bbox",
    "random_cutout",
    "random_hflip",
    "random_pad_crop",
    "sample_beta",
    "smooth_targets",
]

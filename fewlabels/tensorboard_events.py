"""TensorBoard event files (`--tensorboard`), through torch.utils.tensorboard.

A training run writes `RUN/tensorboard/` (a selftrain round: `RUN/roundN/tensorboard/`): per epoch the training
loss, learning rate, images/s and every accuracy, at the optimizer step; once, a grid of augmented training images
as the model sees them. selftrain adds per round, in `RUN/tensorboard/`, the round's accuracies, the number and
precision of its pseudo-labels and a grid of the pseudo-labelled images per class, most confident first. View with
`tensorboard --logdir RUN`. The `tensorboard` package is an optional extra: `pip install fewlabels[tensorboard]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import FewLabelsError

MISSING = ("--tensorboard needs the tensorboard package, which is not installed: pip install 'fewlabels[tensorboard]' "
           "(or pip install tensorboard), or drop --tensorboard")


def check_available() -> None:
    """A clear error, before any work, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise FewLabelsError(MISSING) from None


def writer(folder: Path, purge_step: int | None = None) -> Any:
    """A SummaryWriter on `folder/tensorboard`. purge_step: on resume, the first step to write again (TensorBoard
    then hides the events the interrupted attempt wrote from there on, so a resumed curve has no doubled points)."""
    check_available()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=purge_step)


SCALARS = {"train_loss": "loss/train", "lr": "lr", "images_per_s": "speed/images_per_s"}


def log_epoch(w: Any, row: dict[str, Any]) -> None:
    """One epoch's row of fit()'s history, at its optimizer step."""
    step = int(row["step"])
    for k, v in row.items():
        if k.endswith("_acc"):
            w.add_scalar(f"accuracy/{k[:-4]}", v, step)
        elif k in SCALARS and v is not None:
            w.add_scalar(SCALARS[k], v, step)
    w.flush()


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised float images (N, C, H, W) back to [0, 1] for display."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.detach().float().cpu() * s + m).clamp(0, 1)


def log_images(w: Any, tag: str, images: torch.Tensor, step: int = 0, nrow: int = 8) -> None:
    """A grid of images (N, C, H, W), uint8 or float in [0, 1], as one image."""
    from torchvision.utils import make_grid

    x = images.float().div(255) if not images.is_floating_point() else images.float()
    w.add_image(tag, make_grid(x.cpu(), nrow=nrow, padding=1, pad_value=1.0), step)
    w.flush()


def pseudo_label_grid(images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor, num_classes: int,
                      per_class: int = 8) -> torch.Tensor:
    """One row per class of its `per_class` most confident pseudo-labelled images (uint8 (N, C, H, W) of the
    pseudo-labelled images, their labels and confidences), blank where a class has fewer; (K·per_class, C, H, W)."""
    out = torch.full((num_classes * per_class, *images.shape[1:]), 255, dtype=torch.uint8)
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        idx = idx[confidence[idx].argsort(descending=True)][:per_class]
        out[c * per_class:c * per_class + idx.numel()] = images[idx]
    return out


def log_round(run_dir: Path, row: dict[str, Any], grid: torch.Tensor | None = None, per_class: int = 8) -> None:
    """selftrain's per-round figures in RUN/tensorboard, at the round's number."""
    w = writer(run_dir, purge_step=int(row["round"]) if row["round"] else None)
    try:
        r = int(row["round"])
        for k in ("val_acc", "test_acc"):
            if row.get(k) is not None:
                w.add_scalar(f"rounds/{k}", row[k], r)
        for k in ("pseudo_labels", "pl_precision", "pl_coverage"):
            if row.get(k) is not None:
                w.add_scalar(f"rounds/{k}", row[k], r)
        if grid is not None:
            log_images(w, "pseudo_labels/by_class", grid, r, nrow=per_class)
    finally:
        w.close()

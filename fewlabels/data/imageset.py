"""The in-memory image set every method works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """A whole split as one uint8 tensor.

    images: uint8 (N, C, H, W), C is 1 or 3.
    labels: int64 (N,), -1 where the label is unknown (unlabelled images).
    classes: class names; labels index into it.
    paths: source file of each image, when it came from files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet.labels must have shape ({self.images.shape[0]},), got "
                             f"{tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, idx: torch.Tensor | list[int]) -> ImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes), paths)

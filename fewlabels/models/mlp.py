"""MLP baseline `mlp`: flatten → [Linear → GELU/ReLU] × len(hidden) → dropout → Linear head.

The fully connected control for the CNNs (FC vs CNN, translation probes): it has no notion of neighbouring
pixels, so whatever it learns about a shifted image it must learn from data. Build it for one image shape
(`image_size`, `in_chans`); `hidden` sets the widths, and `mlp_width_for_params` picks a width that matches a
CNN's parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import FewLabelsError
from .base import FewLabelsModel
from .registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class MLP(FewLabelsModel):
    """Hidden layer i is [dropout (i > 0) → Linear → activation]; forward_features is the last activation."""

    def __init__(self, num_classes: int, in_chans: int = 3, *, image_size: int | Sequence[int] = 32,
                 hidden: int | Sequence[int] = (512, 512), act: str = "gelu", drop_rate: float = 0.0) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise FewLabelsError(f"mlp act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        self.input_shape = (in_chans, *_pair(image_size))  # (C, H, W) the first layer was built for
        d_in = math.prod(self.input_shape)
        self.hidden = nn.ModuleList()
        for i, width in enumerate(widths):
            drop = nn.Dropout(drop_rate) if i > 0 else nn.Identity()
            self.hidden.append(nn.Sequential(drop, nn.Linear(d_in, width), ACTIVATIONS[act]()))
            d_in = width
        self.num_classes = num_classes
        self.num_features = d_in
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self.make_head(num_classes)

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise FewLabelsError(f"this mlp was built for images of shape {self.input_shape} (C, H, W) but got "
                                 f"{tuple(x.shape[1:])}: create it with image_size/in_chans of the data")
        return x.flatten(1)  # (N, C·H·W); reshape copes with channels_last input

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activation of each hidden layer as (N, D_i, 1, 1): an MLP has no spatial maps."""
        x = self._flatten(x)
        maps = []
        for layer in self.hidden:
            x = layer(x)
            maps.append(x[:, :, None, None])
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._flatten(x)
        for layer in self.hidden:
            x = layer(x)
        return x  # (N, hidden[-1]), or the flat image when hidden is empty (a linear classifier)

    def depth_groups(self) -> list[tuple[str, ...]]:
        return [(f"hidden.{i}.",) for i in range(len(self.hidden))]


def mlp_width_for_params(target_params: int, in_features: int, num_classes: int, layers: int = 2) -> int:
    """The hidden width w of an MLP with `layers` equal hidden layers whose parameter count is closest to target.

    params(w) = (in + 1)·w + (layers - 1)·(w + 1)·w + (w + 1)·classes, a quadratic in w solved for w.
    """
    if layers < 1:
        raise ValueError("layers must be at least 1")
    a = layers - 1
    b = in_features + 1 + (layers - 1) + num_classes
    c = num_classes - target_params
    w = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return max(1, round(w))


@register_model("mlp")
def mlp(num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
        image_size: int | Sequence[int] = 32, hidden: int | Sequence[int] = (512, 512), act: str = "gelu") -> MLP:
    """MLP for images of in_chans × image_size × image_size; hidden: widths (an int is one hidden layer)."""
    if drop_path_rate:
        raise FewLabelsError("mlp has no residual branches for stochastic depth: use drop_rate (dropout) instead "
                             "of drop_path_rate")
    return MLP(num_classes, in_chans, image_size=image_size, hidden=hidden, act=act, drop_rate=drop_rate)

"""CIFAR ResNets `resnet20/32/44/56` (He et al. 2016, "Deep Residual Learning", section 4.2).

Laid out key for key like akamaster/pytorch_resnet_cifar10, so its pretrained files (../shared/weights) load
strictly after stripping their `module.` prefix: conv1/bn1 stem (16 channels), layer1..3 of n BasicBlocks each
(widths 16/32/64, n = (depth - 2) / 6), global average pool, `linear` head. The "option A" shortcut has no
weights: where a block halves the resolution and doubles the width it subsamples x[:, :, ::2, ::2] and zero-pads
the channels. Additions that leave the state dict unchanged: dropout before `linear` (drop_rate) and stochastic
depth on each residual branch (drop_path_rate, growing linearly over the blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FewLabelsModel, drop_path, drop_path_rates
from .registry import register_model

WIDTHS = (16, 32, 64)


def _kaiming_init(module: nn.Module) -> None:
    # The reference initialises every conv and linear weight with He-normal (fan_in) init.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


class BasicBlock(nn.Module):
    """x → ReLU(shortcut(x) + drop_path(BN(conv(ReLU(BN(conv(x))))))), the first conv with `stride`."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_path_rate: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.drop_path = drop_path(drop_path_rate)
        # Option A pads planes//4 channels on each side: 16 → 32 and 32 → 64 (widths double exactly).
        self.pad = (c_out - c_in) // 2 if stride != 1 or c_in != c_out else 0
        self.subsample = stride != 1

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.subsample:
            x = x[:, :, ::2, ::2]  # (N, C, ⌈H/2⌉, ⌈W/2⌉), the same size as the stride-2 conv's output
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))  # (N, C + 2·pad, h, w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.shortcut(x) + self.drop_path(out))


class CifarResNet(FewLabelsModel):
    """ResNet-(6n+2) for 32×32 images; any input size ≥ 8 works (the pool is global)."""

    head_prefixes = ("linear.",)

    def __init__(self, depth: int, num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = WIDTHS[-1]
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        rates = iter(drop_path_rates(drop_path_rate, 3 * n))
        c_in = WIDTHS[0]
        for i, width in enumerate(WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, width, stride, next(rates)))
                c_in = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.head_drop = nn.Dropout(drop_rate)
        self.linear = nn.Linear(self.num_features, num_classes)
        self.apply(_kaiming_init)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def make_head(self, num_classes: int) -> nn.Module:
        head = nn.Linear(self.num_features, num_classes)
        _kaiming_init(head)
        return head

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps after layer1..3: (N, 16, H, W), (N, 32, ⌈H/2⌉, ⌈W/2⌉), (N, 64, ⌈H/4⌉, ⌈W/4⌉)."""
        x = F.relu(self.bn1(self.conv1(x)))
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_stages(x)[-1].mean(dim=(2, 3))  # global average pool (N, 64, h, w) → (N, 64)

    def depth_groups(self) -> list[tuple[str, ...]]:
        return [("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",)]


def _make_factory(depth: int):
    def factory(num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"ResNet-{depth} for CIFAR ({(depth - 2) // 6} blocks per stage, option-A shortcuts)."
    return factory


for _depth in (20, 32, 44, 56):
    register_model(f"resnet{_depth}", default_weights=f"resnet{_depth}-*.th")(_make_factory(_depth))

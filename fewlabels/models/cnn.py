"""Compact CNN family `cnn-tiny` … `cnn-xl`: one design scaled by width (and, for l/xl, depth).

The design is Keller Jordan's cifar10-airbench network (airbench94.py, 94% on CIFAR-10 in 3.8 A100-seconds):
three stages of [conv3x3 → maxpool2 → BN → GELU → conv3x3 → BN → GELU], widths 64/256/256, a global max pool and a
linear head whose output is scaled by 1/9. `cnn-m` is exactly those widths. Changes, and why:

- Stem: a learned conv3x3 → BN → GELU (full resolution, no pooling) instead of airbench's 2x2 conv whose weights are
  set by whitening the training patches, because a library model cannot assume access to the data at build time.
  The trainer can still start it from the data: `init_from_data` (the `--whiten-stem` option) sets the stem's
  filters to the leading eigenvectors of the covariance of 3x3 training patches, each scaled by 1/sqrt(eigenvalue)
  and used with both signs, as airbench does; the filters then keep training.
- The second conv of a stage is an explicit residual branch, x = GELU(x + drop_path(BN(conv(x)))): airbench gets the
  same identity-at-init by dirac-initialising the conv; the explicit form lets stochastic depth drop the branch.
  `cnn-l`/`cnn-xl` use two convs in the branch, as airbench96 does (10 conv layers, 96% on CIFAR-10).
- Pools use ceil_mode (the -p2 models: floor mode, see below) and the final pool is a global max, so any input from
  8×8 up works (8×8 ends as 1×1).
- BatchNorm weights are trainable and momentum is PyTorch's default (airbench96 dropped its custom momentum too).

Each size also comes as `<name>-p2` (e.g. `cnn-s-p2`) with airbench's own stem: a 2x2 conv without padding, a bias
and no BatchNorm, 2·C·4 filters that `--whiten-stem` sets to every whitened patch direction (± pairs) and then
freezes, and floor-mode pools (31 → 15 → 7 → 3 for 32×32). Its training step is ~1.2× faster on CPU than with the
conv3x3 stem (no BatchNorm and GELU at full resolution, smaller maps after); on CIFAR-10 it ends 25 epochs at about
the same accuracy (0.9000 against 0.9017-0.9041, benchmarks/results/cifar10_supervised*.md). Without `--whiten-stem`
its filters are learned from a random start, which was the better choice with few labels (4,000 CIFAR-10 images:
0.7615 learned vs 0.7395 whitened, benchmarks/results/selftrain_cifar10_4000_p2*_round0.md).

Sizes (params at 10 classes, forward GFLOPs per 32×32 image; CPU speed in benchmarks/results/model_speed.md):

    name      widths        convs per branch   params   GFLOPs
    cnn-tiny  16/64/64      1                  0.13 M   0.022
    cnn-s     32/128/128    1                  0.50 M   0.087
    cnn-m     64/256/256    1 (airbench94)     1.98 M   0.304
    cnn-l     128/384/384   2                  7.42 M   1.049
    cnn-xl    128/512/512   2 (airbench96)     12.73 M  1.587
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewLabelsError
from .base import FewLabelsModel, drop_path, drop_path_rates
from .registry import register_model

BN_EPS = 1e-12  # airbench's value (PyTorch: 1e-5); a zero-variance channel still gives 0, not inf
HEAD_SCALE = 1 / 9  # airbench: smaller initial logits and a smaller effective head learning rate train faster


@dataclass(frozen=True)
class CNNSize:
    widths: tuple[int, int, int]
    convs_per_branch: int  # convs inside each stage's residual branch (airbench94: 1, airbench96: 2)

    @property
    def stem_width(self) -> int:
        return min(32, self.widths[0])


CNN_SIZES: dict[str, CNNSize] = {
    "cnn-tiny": CNNSize((16, 64, 64), 1),
    "cnn-s": CNNSize((32, 128, 128), 1),
    "cnn-m": CNNSize((64, 256, 256), 1),
    "cnn-l": CNNSize((128, 384, 384), 2),
    "cnn-xl": CNNSize((128, 512, 512), 2),
}


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


def dirac_conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A conv whose first c_in filters start as the identity (airbench: an implicit residual, faster training)."""
    conv = conv3x3(c_in, c_out)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ScaledLinear(nn.Linear):
    """Linear layer whose output is multiplied by a constant (airbench's Mul(1/9) after the head)."""

    def __init__(self, in_features: int, out_features: int, scale: float = HEAD_SCALE) -> None:
        super().__init__(in_features, out_features)
        self.scale = scale
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.scale


class Stem(nn.Module):
    """conv3x3 → BN → GELU at full resolution (the family's default stem)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = conv3x3(c_in, c_out)
        self.norm = batch_norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x)))


class PatchStem(nn.Module):
    """airbench's stem: a 2x2 conv without padding (H×W → (H-1)×(W-1)) with a bias and 2·C·4 filters (every
    direction of a 2x2 patch, with both signs), then GELU, no BatchNorm. Cheaper than `Stem` (no full-resolution
    BatchNorm, one row and column less, and the stages after it pool in floor mode: 31 → 15 → 7 → 3); meant to be
    whitened from the data (`init_from_data`), which also freezes its filters as airbench does (the bias trains)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, 2 * c_in * 4, kernel_size=2, bias=True)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv(x))


STEMS = ("conv3x3", "patch2x2")


class ResidualBranch(nn.Module):
    """x → GELU(x + drop_path(f(x))), f = [conv → BN] (→ GELU → conv → BN when convs == 2)."""

    def __init__(self, channels: int, convs: int, drop_path_rate: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            if i > 0:
                layers.append(nn.GELU())
            layers += [conv3x3(channels, channels), batch_norm(channels)]
        self.branch = nn.Sequential(*layers)
        self.drop_path = drop_path(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.drop_path(self.branch(x)))


class Stage(nn.Module):
    """conv3x3 → maxpool2 (halves H, W, rounding up; rounding down with ceil_mode=False) → BN → GELU → residual."""

    def __init__(self, c_in: int, c_out: int, convs: int, drop_path_rate: float, ceil_mode: bool = True) -> None:
        super().__init__()
        self.conv = dirac_conv3x3(c_in, c_out)
        self.ceil_mode = ceil_mode
        self.norm = batch_norm(c_out)
        self.residual = ResidualBranch(c_out, convs, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool before BN as airbench does: BN and GELU then run on a quarter of the pixels. Floor mode (airbench's,
        # 31 → 15 → 7 → 3) still rounds up a side of 1, so that small inputs keep a pixel. The sizes are read as
        # Python ints: a trace (torch.jit.trace, the ONNX export) records them as tensors, which max_pool2d refuses.
        x = self.conv(x)
        x = F.max_pool2d(x, 2, ceil_mode=self.ceil_mode or min(int(x.shape[-2]), int(x.shape[-1])) < 2)
        return self.residual(F.gelu(self.norm(x)))


class CompactCNN(FewLabelsModel):
    """The airbench-style CNN; see the module docstring."""

    def __init__(self, size: CNNSize, num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, stem: str = "conv3x3") -> None:
        super().__init__()
        if stem not in STEMS:
            raise FewLabelsError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        self.num_classes = num_classes
        self.num_features = size.widths[-1]
        self.stem: nn.Module = Stem(in_chans, size.stem_width) if stem == "conv3x3" else PatchStem(in_chans)
        stem_width = self.stem.conv.out_channels
        rates = drop_path_rates(drop_path_rate, len(size.widths))
        c_ins = (stem_width, *size.widths[:-1])
        ceil_mode = stem == "conv3x3"  # the patch stem's odd maps are pooled as airbench does (floor)
        self.stages = nn.Sequential(*(Stage(c_in, c_out, size.convs_per_branch, rate, ceil_mode)
                                      for c_in, c_out, rate in zip(c_ins, size.widths, rates)))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self.make_head(num_classes)

    def make_head(self, num_classes: int) -> nn.Module:
        return ScaledLinear(self.num_features, num_classes)

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Maps after each stage: (N, w1, ⌈H/2⌉, ⌈W/2⌉), (N, w2, ⌈H/4⌉, ⌈W/4⌉), (N, w3, ⌈H/8⌉, ⌈W/8⌉)."""
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> bool:
        """Patch-whitening initialisation of the stem (airbench): the stem conv's filters become the leading
        eigenvectors of the covariance of the 3x3 patches of `x`, divided by sqrt(eigenvalue + eps), in ± pairs.
        x: normalised training images (N, C, H, W), a few thousand are plenty."""
        conv = self.stem.conv
        k = conv.kernel_size[0]
        patches = F.unfold(x.float(), k).transpose(1, 2).reshape(-1, conv.in_channels * k * k)  # (N·L, C·k·k)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / max(1, patches.shape[0] - 1)
        eigval, eigvec = torch.linalg.eigh(cov.double())  # ascending
        n = conv.out_channels // 2
        if n == 0 or n > eigval.numel():
            return False
        top = eigvec[:, -n:].flip(1).T / (eigval[-n:].flip(0).clamp(min=0) + 5e-4).sqrt()[:, None]  # (n, C·k·k)
        w = torch.cat([top, -top]).float().view(2 * n, conv.in_channels, k, k)
        conv.weight.zero_()
        conv.weight[: 2 * n].copy_(w.to(conv.weight.dtype))
        if isinstance(self.stem, PatchStem):
            conv.weight.requires_grad_(False)  # airbench: the whitening filters stay fixed, the bias trains
        return True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Global max pool (N, C, h, w) → (N, C), as airbench's final MaxPool2d(3) over its 3×3 map.
        return self.stages(self.stem(x)).amax(dim=(2, 3))

    def depth_groups(self) -> list[tuple[str, ...]]:
        return [("stem.",)] + [(f"stages.{i}.",) for i in range(len(self.stages))]


def _make_factory(name: str, size: CNNSize, stem: str):
    def factory(num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0) -> CompactCNN:
        return CompactCNN(size, num_classes, in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                          stem=stem)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = (f"{name}: widths {size.widths}, {size.convs_per_branch} conv(s) per residual branch, "
                       f"{stem} stem.")
    return factory


for _name, _size in CNN_SIZES.items():
    register_model(_name)(_make_factory(_name, _size, "conv3x3"))
    register_model(f"{_name}-p2")(_make_factory(f"{_name}-p2", _size, "patch2x2"))

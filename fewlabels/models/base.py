"""The interface every fewlabels model shares, and small helpers the model files use.

A model maps images (N, C, H, W) to logits (N, K) in two halves, so that methods can cache features, swap
heads and read intermediate maps without knowing the architecture:

    forward(x) == forward_head(forward_features(x))
    forward_features(x) -> (N, num_features) pooled features, before dropout
    forward_head(f)     -> (N, K) logits: dropout (drop_rate, train mode only) then the classifier
    feature_stages(x)   -> [(N, C_i, H_i, W_i)] the map after each stage (translation probes)
    get_classifier() / reset_classifier(k) / head_prefixes / param_depths()
"""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (Huang et al. 2016): in training, zero each sample's branch with
    probability p and scale the kept ones by 1 / (1 - p) so the expectation is unchanged; identity in eval.

    The same computation as timm.layers.DropPath, kept here because importing timm takes seconds and only the
    `timm:` models need it.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (N, 1, 1, 1): per sample
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def drop_path_rates(rate: float, n: int) -> list[float]:
    """Stochastic-depth rates growing linearly with depth: block i of n gets rate * (i + 1) / n.

    Huang et al. 2016 (Deep Networks with Stochastic Depth), p_l = l / L * p_L: the last block is dropped
    most often, because early features are reused by everything after them.
    """
    return [rate * (i + 1) / n for i in range(n)]


def drop_path(rate: float) -> nn.Module:
    """DropPath on a residual branch; Identity when the rate is 0 so that the default model does no extra work."""
    return DropPath(rate) if rate > 0 else nn.Identity()


def depths_from_groups(names: list[str], head_prefixes: tuple[str, ...],
                       groups: list[tuple[str, ...]]) -> dict[str, int]:
    """Depth of each parameter counted from the head: head = 0, last group = 1, ..., first group = len(groups).

    `groups` lists key prefixes from the input side (stem first). A parameter in no group is a bug in the model
    definition, so it raises instead of silently getting the head's learning rate.
    """
    depths: dict[str, int] = {}
    for name in names:
        if name.startswith(head_prefixes):
            depths[name] = 0
            continue
        index = next((i for i, prefixes in enumerate(groups) if name.startswith(prefixes)), None)
        if index is None:
            raise RuntimeError(f"parameter {name!r} belongs to no depth group {groups}")
        depths[name] = len(groups) - index
    return depths


class FewLabelsModel(nn.Module):
    """Base of the fewlabels models: the head is one module (named by `head_prefixes`) after `head_drop`.

    Subclasses build `self.<head>` and `self.head_drop`, set `num_features` and `num_classes`, and implement
    `forward_features`, `feature_stages` and `depth_groups`.
    """

    num_features: int
    num_classes: int
    head_prefixes: tuple[str, ...] = ("head.",)

    @property
    def _head_attr(self) -> str:
        return self.head_prefixes[0].removesuffix(".")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def depth_groups(self) -> list[tuple[str, ...]]:
        """State-dict key prefixes of the body, grouped by depth, from the stem to the last stage."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(self.head_drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self._head_attr)

    def make_head(self, num_classes: int) -> nn.Module:
        """A freshly initialised classifier; models with a special head (scaled, custom init) override this."""
        return nn.Linear(self.num_features, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a new one for `num_classes`, on the old head's device and dtype."""
        old = self.get_classifier().weight
        setattr(self, self._head_attr, self.make_head(num_classes).to(device=old.device, dtype=old.dtype))
        self.num_classes = num_classes

    def init_from_data(self, x: torch.Tensor) -> bool:
        """Data-dependent initialisation from a sample of normalised training images (N, C, H, W).

        Returns whether the model used it; the default does nothing (see CompactCNN's patch whitening)."""
        return False

    def param_depths(self) -> dict[str, int]:
        """For each parameter name, its depth from the head (head 0, last stage 1, ..., stem max): for layer-wise
        learning-rate decay, lr_scale = decay ** depth."""
        names = [n for n, _ in self.named_parameters()]
        return depths_from_groups(names, self.head_prefixes, self.depth_groups())

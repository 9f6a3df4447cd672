"""`timm:<name>`: any timm model, adapted to the fewlabels model interface.

The timm model keeps its own class, modules and state-dict keys (so timm checkpoints load unchanged); its class
is swapped for a subclass that adds the fewlabels methods in front of timm's:

    forward_features(x) = timm forward_head(timm forward_features(x), pre_logits=True)   # pooled (N, D)
    forward_head(f)     = get_classifier()(f)

so forward(x) computes exactly what timm's forward does. Differences from our own models: timm applies drop_rate
inside its pre-logits (so forward_features drops out in train mode), and for the few models whose pre-logits width
differs from `num_features` (e.g. MobileNetV3's head conv) the width of forward_features is `head_hidden_size`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from timm.models import group_parameters
from timm.optim import auto_group_layers
from torch import nn

from ..errors import FewLabelsError

HUB_PROBE_TIMEOUT_S = 3.0


class TimmAdapter:
    """Mixin put before a timm model class in the MRO; super() reaches the timm implementation."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_head(super().forward_features(x), pre_logits=True)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # pre_logits is accepted for timm callers; our features are already the pre-logits.
        return features if pre_logits else self.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """timm's intermediates (N, C_i, H_i, W_i) at each of its feature_info levels (the stem included)."""
        if not hasattr(super(), "forward_intermediates"):
            raise FewLabelsError(f"timm model {type(self).__name__} has no forward_intermediates(), so "
                                 f"feature_stages is unavailable for it")
        return super().forward_intermediates(x, intermediates_only=True)

    @property
    def head_prefixes(self) -> tuple[str, ...]:
        head = self.get_classifier()
        names = [name for name, module in self.named_modules() if module is head and name]
        if names:
            return tuple(f"{n}." for n in names)
        classifier = self.pretrained_cfg.get("classifier", "head")
        return tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        """timm builds the new head on the CPU in fp32; move it to where the old one was."""
        old = next(self.get_classifier().parameters(), None)
        super().reset_classifier(num_classes, *args, **kwargs)
        if old is not None:
            self.get_classifier().to(device=old.device, dtype=old.dtype)

    def param_depths(self) -> dict[str, int]:
        """Depth from the head using timm's own layer grouping (the one its layer-decay optimizer uses)."""
        if hasattr(self, "group_matcher"):
            layer_of = group_parameters(self, self.group_matcher(coarse=False), reverse=True)
        else:
            layer_of = auto_group_layers(self)
        head = self.head_prefixes
        names = [name for name, _ in self.named_parameters()]
        # timm's layer ids count from the stem; the deepest non-classifier layer gets depth 1.
        last = max((layer_of[n] for n in names if n in layer_of and not n.startswith(head)), default=0)
        return {n: 0 if n.startswith(head) else last - min(layer_of.get(n, last), last) + 1 for n in names}


@functools.cache
def _adapted_class(cls: type[nn.Module]) -> type[nn.Module]:
    return type(cls.__name__, (TimmAdapter, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def adapt_timm_model(model: nn.Module) -> nn.Module:
    """Give a timm model the fewlabels interface in place (state-dict keys unchanged)."""
    if not isinstance(model, TimmAdapter):
        model.__class__ = _adapted_class(type(model))
    return model


def _hub_probe_address() -> tuple[str, int]:
    """The host a download connects to first: the HTTPS proxy when one is set, else the hub endpoint."""
    from huggingface_hub import constants

    proxy = urllib.request.getproxies().get("https")
    url = urlsplit(proxy if proxy else constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to the hub within `timeout` s? (DNS included: it runs in a daemon thread,
    because getaddrinfo has no timeout of its own.) Without this check an offline machine retries for ~50 s."""
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError):
            socket.create_connection(_hub_probe_address(), timeout=timeout).close()
            ok.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make huggingface_hub use only its local cache (as HF_HUB_OFFLINE=1 does) for the duration."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _download_error(name: str, error: Exception, offline: bool) -> FewLabelsError:
    why = "the Hugging Face hub is unreachable and they are not in the local cache" if offline else str(error)[:300]
    return FewLabelsError(
        f"could not get pretrained weights for timm:{name} ({why}). Either pass a local file, "
        f"pretrained='/path/to/weights.pth' (or .safetensors), or put the weights in the Hugging Face cache on a "
        f"connected machine (e.g. `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`), copy "
        f"~/.cache/huggingface here and set HF_HUB_OFFLINE=1")


def _unknown_timm_name(name: str) -> FewLabelsError:
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join('timm:' + c for c in close)}? " if close else ""
    return FewLabelsError(f"unknown timm model {name!r}: {hint}see timm.list_models() for the names")


def create_timm_model(name: str, num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                      drop_path_rate: float = 0.0, pretrained: bool | str | os.PathLike = False,
                      **kwargs: Any) -> nn.Module:
    """timm.create_model(name, ...) with the fewlabels interface; pretrained=True downloads through the hub,
    failing within seconds when it is unreachable; a path loads that file non-strictly."""
    if not timm.is_model(name):
        raise _unknown_timm_name(name)
    # Noise options are passed only when set, so that timm models without stochastic depth still build.
    noise = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    args = dict(num_classes=num_classes, in_chans=in_chans, **noise, **kwargs)
    offline = False
    try:
        if pretrained is True:
            from huggingface_hub import constants

            offline = constants.HF_HUB_OFFLINE or not hub_reachable()
            with _hub_offline(offline):
                model = timm.create_model(name, pretrained=True, **args)
        else:
            model = timm.create_model(name, pretrained=False, **args)
    except TypeError as e:  # an option this timm model does not take
        raise FewLabelsError(f"timm:{name} rejected the options {sorted({**noise, **kwargs})}: {e}") from None
    except Exception as e:  # hub, network and file errors come in many types (OSError, httpx, hub errors)
        if pretrained is not True:
            raise
        raise _download_error(name, e, offline) from e
    model = adapt_timm_model(model)
    if pretrained and pretrained is not True:
        from .loading import load_pretrained

        logging.getLogger(__name__).info("%s", load_pretrained(model, os.fspath(pretrained)))
    return model

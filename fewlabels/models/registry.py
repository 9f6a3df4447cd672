"""Model registry: a name resolves to a constructor through a dict; `timm:<name>` passes through to timm."""

from __future__ import annotations

import difflib
import inspect
import logging
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import FewLabelsError

log = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
_DEFAULT_WEIGHTS: dict[str, str] = {}  # name → glob of its file in the weights folder, e.g. "resnet20-*.th"

TIMM_PREFIX = "timm:"
WEIGHTS_ENV = "FEWLABELS_WEIGHTS_DIR"


def register_model(name: str, *, default_weights: str | None = None) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding `factory(num_classes, in_chans, *, drop_rate, drop_path_rate, **kw)` under `name`.

    `default_weights` is a glob (e.g. "resnet20-*.th") looked up in the weights folder when pretrained=True.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = factory
        if default_weights is not None:
            _DEFAULT_WEIGHTS[name] = default_weights
        return factory

    return decorator


def list_models() -> list[str]:
    """Registered names, sorted; any timm model is also available as `timm:<timm name>`."""
    return sorted(_REGISTRY)


def _unknown_name_error(name: str) -> FewLabelsError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return FewLabelsError(f"unknown model {name!r}: {hint}available: {', '.join(list_models())}, "
                          f"or any timm model as '{TIMM_PREFIX}<name>' (e.g. timm:resnet18)")


def _check_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments the factory does not take, naming the ones it does (no TypeError traceback)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = [p for p in params if p not in ("num_classes", "in_chans")]
        raise FewLabelsError(f"model {name!r} takes no option {', '.join(unknown)}; its options: {', '.join(accepted)}")


def weights_dirs() -> list[Path]:
    """Where pretrained=True looks: $FEWLABELS_WEIGHTS_DIR alone when set, else ../shared/weights from the current
    folder and from the repository root."""
    if os.environ.get(WEIGHTS_ENV):
        return [Path(os.environ[WEIGHTS_ENV])]
    candidates = [Path.cwd() / "../shared/weights", Path(__file__).resolve().parents[2] / "../shared/weights"]
    unique: dict[Path, Path] = {}
    for c in candidates:
        unique.setdefault(c.resolve(), c)
    return list(unique.values())


def default_weights_file(name: str) -> Path:
    """The file pretrained=True loads for `name`, or a FewLabelsError saying where to put it."""
    if name not in _DEFAULT_WEIGHTS:
        if name not in _REGISTRY:
            raise _unknown_name_error(name)  # e.g. resnet18: a timm model, not one of ours
        raise FewLabelsError(f"model {name!r} has no built-in pretrained weights: give a weights file "
                             f"(.pth/.pt/.th/.safetensors) or a fewlabels run folder as --pretrained PATH (Python: "
                             f"pretrained='PATH'), or leave --pretrained out")
    pattern = _DEFAULT_WEIGHTS[name]
    dirs = weights_dirs()
    for d in dirs:
        found = sorted(d.glob(pattern))
        if found:
            return found[0]
    raise FewLabelsError(f"no pretrained weights for {name!r}: put a file matching {pattern} in "
                         f"{' or '.join(str(d) for d in dirs)} (or set {WEIGHTS_ENV} to its folder), "
                         f"or give the file as --pretrained PATH (Python: pretrained='PATH')")


def _positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise FewLabelsError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def create_model(name: str, num_classes: int, in_chans: int = 3, *, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, pretrained: bool | str | os.PathLike = False,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model (or `timm:<name>`), optionally loading weights.

    pretrained: False; True for the model's own weights (CIFAR ResNets: $FEWLABELS_WEIGHTS_DIR or ../shared/weights;
    timm: the Hugging Face hub); or a path, loaded non-strictly (a head of another class count is replaced).
    """
    num_classes, in_chans = _positive_int("num_classes", num_classes), _positive_int("in_chans", in_chans)
    for what, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
        if not 0 <= rate < 1:
            raise FewLabelsError(f"{what} must be in [0, 1), got {rate!r}")
    if name.startswith(TIMM_PREFIX):
        from .timm_models import create_timm_model

        return create_timm_model(name.removeprefix(TIMM_PREFIX), num_classes, in_chans, drop_rate=drop_rate,
                                 drop_path_rate=drop_path_rate, pretrained=pretrained, **kwargs)
    if name not in _REGISTRY:
        raise _unknown_name_error(name)
    factory = _REGISTRY[name]
    _check_kwargs(name, factory, kwargs)
    model = factory(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                    **kwargs)
    if pretrained is True:
        pretrained = default_weights_file(name)
    if pretrained:
        from .loading import load_pretrained

        log.info("%s", load_pretrained(model, os.fspath(pretrained)))
    return model

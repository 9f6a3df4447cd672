"""fewlabels: train accurate image classifiers when labels are scarce.

The Python API mirrors the command line: each command is a function taking the same options as keyword arguments,
e.g. `fewlabels.train(data="digits", model="cnn-s", labels_per_class=5, epochs=20)` or
`fewlabels.selftrain(data="digits", labels_per_class=5, rounds=2)`. The training engine lives in `fewlabels.engine`
(not `fewlabels.train`, which would shadow the function). Functions are imported on
first use, so `import fewlabels` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .commands import COMMANDS
from .errors import FewLabelsError

__version__ = "0.1.0"

_API = {
    # each command as a function, and its options as a config class: fewlabels.train(fewlabels.TrainCommand(...))
    **{name: c.module for c in COMMANDS for name in (c.function, c.config)},
    "recipe": "fewlabels.config",
    "recipes": "fewlabels.config",
    "load_dataset": "fewlabels.data",
    "make_split": "fewlabels.data",
    "ImageSet": "fewlabels.data",
    "read_manifest": "fewlabels.data.manifest",
    "load_pool": "fewlabels.data.pool",
    "create_model": "fewlabels.models",
    "list_models": "fewlabels.models",
    "load_model": "fewlabels.engine.checkpoint",
    "fit": "fewlabels.engine.loop",
    "TrainConfig": "fewlabels.engine.config",
    "TrainSet": "fewlabels.engine.loop",
    "soft_cross_entropy": "fewlabels.losses",
    "kd_loss": "fewlabels.losses",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fewlabels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["FewLabelsError", "__version__", *_API]

"""Commands beyond train/evaluate/predict, registered by name (the CLI builds its parser from this list)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def extra_commands(Command: Callable) -> list:
    from . import pseudolabel as P
    from . import selftrain as ST

    cmds = [
        Command("pseudolabel", P.PseudoLabelCommand, P.pseudolabel,
                "label unlabelled images with a teacher (threshold, class balance)"),
        Command("selftrain", ST.SelfTrainCommand, ST.selftrain,
                "Noisy Student self-training: teacher → pseudo-labels → noised student, repeated"),
    ]
    for modname in ("distill", "transfer", "preview", "probes", "suggest"):
        if importlib.util.find_spec(f"fewlabels.methods.{modname}") is None:
            continue
        mod = importlib.import_module(f"fewlabels.methods.{modname}")
        cmds += [Command(*spec) for spec in getattr(mod, "COMMANDS", [])]
    return cmds

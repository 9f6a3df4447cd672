"""`fewlabels calibrate`: temperature scaling of a trained model on its run's validation images.

A network trained with cross-entropy is most often over-confident: of the images it labels with 95 % confidence,
far fewer than 95 % are right. Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on
held-out labelled images; the predictions stay the same and the probabilities become honest, which is what a
pseudo-label threshold and a user reading `predict`'s probabilities need. T is stored in the checkpoint's model.json;
`evaluate`, `predict`, `pseudolabel` and a `selftrain` started from the model use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import Options
from ..console import Console
from ..data.prepare import DataConfig, eval_sets, prepare_data
from ..engine.checkpoint import find_checkpoint, load_model
from ..engine.config import TTA, Compute, Device
from ..errors import FewLabelsError
from ..runs import run_of
from ..utils import pick_device, write_json
from .common import Run, calibrate_checkpoint, check_classes
from .supervised import Trained


class CalibrateCommand(Options):
    """Fit temperature scaling on the validation images of a trained model's run and store the temperature with the
    model; prints ECE and NLL before and after (on the test images when the data has them, else on the validation
    images)."""

    groups = (Trained, TTA, Device, Compute, Run)
    hide = ("on", "out", "overwrite", "channels_last")


def calibrate(cfg: CalibrateCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Calibrate the model of a run folder (its checkpoints/best); returns {"temperature", "val": {"ece_before",
    "ece_after", "nll_before", "nll_after", "n"}, "test": {...} when there are test images, "checkpoint"} (also
    RUN/calibration.json). E.g. `calibrate(model_path="runs/digits")`."""
    cfg = CalibrateCommand.build(cfg, kwargs)
    log = Console.of(cfg)
    if not cfg.model_path:
        raise FewLabelsError("calibrate needs a model: pass the run folder it was trained in")
    folder = find_checkpoint(cfg.model_path)
    run = run_of(cfg.model_path, "config.yaml", "split.json")
    if run is None:
        raise FewLabelsError(f"{cfg.model_path} is not inside a fewlabels run folder (config.yaml and split.json name "
                             f"its validation images): pass the run folder the model was trained in")
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        saved = None
    if not isinstance(saved, dict):
        raise FewLabelsError(f"{run / 'config.yaml'} cannot be read: calibrate needs the run's data options")
    data = {k: v for k, v in saved.items() if k in DataConfig.options and k not in ("split", "labels",
                                                                                     "labels_per_class")}
    dc = DataConfig(**data, split=str(run / "split.json"))
    ds, split = prepare_data(dc, None, log)
    device = pick_device(cfg.device)
    model, meta = load_model(folder, device)
    check_classes(meta, ds.train.classes, f"the model at {cfg.model_path}", ds.train)
    out = calibrate_checkpoint(folder, model, eval_sets(ds, split), (meta["mean"], meta["std"]), cfg, log)
    out["checkpoint"] = str(folder)
    write_json(Path(run) / "calibration.json", out)
    return out

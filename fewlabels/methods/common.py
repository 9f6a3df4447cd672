"""What the commands share: model, teacher and run options, the training config of a command, building a model,
checking a model against the data, and the final report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Options, group, opt
from ..data import Dataset, ImageSet, Split
from ..engine.config import Augment, TrainConfig, eval_batch
from ..engine.loop import TrainSet
from ..errors import FewLabelsError
from ..eval import ECE_BINS
from ..targets import one_hot
from ..utils import pick_dtype, seed_everything


@group
class Model:
    """The network."""

    model: str = opt("cnn-s", "model name: cnn-tiny/s/m/l/xl (each also as -p2: airbench's 2x2 stem, faster), "
                              "mlp, resnet20/32/44/56, timm:<name>")
    drop_rate: float = opt(0.0, "dropout before the classifier", ge=0, lt=1)
    drop_path_rate: float = opt(0.0, "stochastic depth rate (deepest block)", ge=0, lt=1)
    pretrained: str | None = opt(None, "initial weights: a weights file, a fewlabels run folder, or 'true' for the "
                                 "model's own pretrained weights")


@group
class Teacher:
    """A trained model that teaches."""

    teacher: str | None = opt(None, "the teacher: a fewlabels run folder or checkpoint (train, transfer or distill) "
                              "trained on the same classes; its split is reused when it was made for this data. "
                              "selftrain takes it as round 0 instead of training a teacher")


@group
class Temperature:
    """Softening of a teacher's outputs."""

    temperature: float = opt(1.0, "softmax temperature T of the teacher's outputs: of soft pseudo-labels (with "
                             "--soft) or of distillation targets", gt=0)


@group
class Run:
    """What a command writes and prints."""

    out: str | None = opt(None, "where to write: the run folder of a training command (default "
                                "runs/<command>-<time>; an existing one is resumed, given the same options), else the "
                                "output file", resume="change")
    quiet: bool = opt(False, "print less", resume="change")
    overwrite: bool = opt(False, "replace --out when it exists", resume="change")


@group
class Format:
    """The format of the file a command writes (each command allows its own part of the choices)."""

    format: str = opt("csv", "format of the output: csv or json (predict); onnx (ONNX at --opset) or torchscript "
                      "(torch.jit trace) (export)", choices=("csv", "json", "onnx", "torchscript"), resume="change")


NO_FLIP_SOURCES = ("digits", "mnist", "svhn")  # a mirrored digit is not the same digit


def train_config(cfg: Options, ds: Dataset, **changes: Any) -> TrainConfig:
    """The TrainConfig part of a command's options, with hflip resolved for the dataset."""
    if cfg.group(Augment).hflip is None and "hflip" not in changes:
        # by the source name the user gave: an image folder named "mnist" is still a folder
        changes["hflip"] = getattr(cfg, "data", ds.name) not in NO_FLIP_SOURCES
    return TrainConfig.of(cfg, **changes)


def labelled_trainset(ds: Dataset, split: Split, smoothing: float) -> TrainSet:
    lab = ds.train.subset(split.labelled)
    return TrainSet(lab.images, one_hot(lab.labels, ds.train.num_classes, smoothing),
                    torch.ones(len(lab), dtype=torch.bool), norm=(ds.mean, ds.std))


def build_model(mc: Model, ds: Dataset, log=print, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model (initialised from `seed`) and the metadata a checkpoint needs to rebuild it."""
    from ..models import create_model, load_pretrained
    from ..models.registry import TIMM_PREFIX, default_weights_file

    seed_everything(seed)
    c, h, w = ds.train.image_shape
    kwargs: dict[str, Any] = {"drop_rate": mc.drop_rate, "drop_path_rate": mc.drop_path_rate}
    if mc.model == "mlp":
        kwargs["image_size"] = h
    own = mc.pretrained is not None and mc.pretrained.lower() in ("true", "yes", "1")
    timm_own = own and mc.model.startswith(TIMM_PREFIX)  # timm fetches its own weights and fits its own head
    source = (str(default_weights_file(mc.model)) if own and not timm_own
              else mc.pretrained if mc.pretrained and not own else None)
    model = create_model(mc.model, num_classes=ds.train.num_classes, in_chans=c, pretrained=timm_own, **kwargs)
    if source:
        report = load_pretrained(model, source)
        log(str(report))
        _new_head_unless_same_classes(model, report, source, ds.train.classes, log)
    meta = {"model": mc.model, "model_kwargs": kwargs, "classes": ds.train.classes, "in_chans": c,
            "image_size": [h, w], "mean": list(ds.mean), "std": list(ds.std), "dataset": ds.name}
    return model, meta


def _new_head_unless_same_classes(model: torch.nn.Module, report: Any, source: str, classes: list[str], log) -> None:
    """A classifier loaded from weights is only kept when it is known to be for these classes, in this order: a
    fewlabels checkpoint says which classes it was trained for. A plain weights file does not, so its head is kept
    when its shape fits (as timm does) and the log says so."""
    from ..engine.checkpoint import read_meta

    heads = tuple(getattr(model, "head_prefixes", ()))
    if not heads or not any(k.startswith(heads) for k in report.loaded):
        return
    try:
        trained_for = list(read_meta(source)["classes"])
    except (FewLabelsError, KeyError):
        log(f"note: the classifier of {source} fits this model and was loaded too: it is only right if that file "
            f"was trained for these {len(classes)} classes in this order ({_names(classes)})")
        return
    if trained_for != list(classes):
        model.reset_classifier(len(classes))
        log(f"new classifier: {source} was trained for other classes ({_names(trained_for)})")


def flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


def check_classes(meta: dict, classes: list[str], what: str, images: ImageSet | None = None) -> None:
    """A trained model meets data: same classes, and (given the images) the same channels and image size."""
    if list(meta["classes"]) != list(classes):
        trained, given = list(meta["classes"]), list(classes)
        missing, extra = [c for c in trained if c not in given], [c for c in given if c not in trained]
        diff = "; ".join(part for part in (
            f"the data lacks {_names(missing)}" if missing else "",
            f"the model was not trained for {_names(extra)}" if extra else "",
            "the same classes come in another order" if not missing and not extra else "") if part)
        raise FewLabelsError(f"{what} was trained for {len(trained)} classes ({_names(trained)}) but the data has "
                             f"{len(given)} ({_names(given)}): {diff}. Pass the data it was trained on, or train a "
                             f"model for this class set (train starts from its weights with a new head: --pretrained)")
    if images is None:
        return
    c, h, w = images.image_shape
    if "in_chans" in meta and int(meta["in_chans"]) != c:
        raise FewLabelsError(f"{what} takes {meta['in_chans']}-channel images but the data has {c} channels: pass "
                             f"the data it was trained on")
    if "image_size" in meta and list(meta["image_size"]) != [h, w]:
        th, tw = meta["image_size"]
        fix = (f"for an image folder, --image-size {th}" if th == tw else
               f"--image-size makes square images only: resize the images to {tw}x{th} (width x height)")
        raise FewLabelsError(f"{what} was trained on {tw}x{th} images (width x height) but the data has {w}x{h}: "
                             f"pass the data it was trained on ({fix})")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


@group
class Calibration:
    """Whether a training command calibrates its final model."""

    calibrate: bool = opt(False, "after training, fit temperature scaling on the validation images and store the "
                          "temperature with the model: predict, pseudolabel and selftrain's next round then use "
                          "calibrated probabilities (as `fewlabels calibrate RUN` does afterwards)")


def calibrate_checkpoint(folder: Path, model: torch.nn.Module, evals: dict[str, ImageSet], norm: tuple,
                         tc: Options, log=print) -> dict[str, Any]:
    """Fit temperature scaling to the model's logits on the validation images (evals["val"]) and store the
    temperature in the checkpoint's model.json; returns {"temperature", "val": {ece/nll before and after}, and the
    same on "test" when there are test images (held out from the fit: the honest figure)}."""
    from ..engine.checkpoint import update_meta
    from ..eval import calibration, fit_temperature, predict_logits

    if "val" not in evals:
        raise FewLabelsError("calibration fits a temperature on validation images and this run has none (--val 0): "
                             "train with --val (e.g. 0.1), or pass --val DIR")
    logits = {name: predict_logits(model, s.images, *norm, batch_size=eval_batch(tc, s.images.shape),
                                   dtype=pick_dtype(tc.precision, next(model.parameters()).device),
                                   tta_flip=tc.tta_flip, tta_translate=tc.tta_translate)
              for name, s in evals.items() if name in ("val", "test")}
    t = fit_temperature(logits["val"], evals["val"].labels)
    out: dict[str, Any] = {"temperature": t, "bins": ECE_BINS}
    for name, z in logits.items():
        before, after = calibration(z, evals[name].labels), calibration(z / t, evals[name].labels)
        out[name] = {"n": len(evals[name]), "ece_before": before["ece"], "ece_after": after["ece"],
                     "nll_before": before["nll"], "nll_after": after["nll"]}
    update_meta(folder, temperature=t, calibration=out)
    held = out.get("test", out["val"])
    log(f"calibrated: temperature {t:.3f}; ECE {held['ece_before']:.4f} → {held['ece_after']:.4f}, NLL "
        f"{held['nll_before']:.4f} → {held['nll_after']:.4f} on the {'test' if 'test' in out else 'validation'} "
        f"images")
    return out


def with_report(out: dict[str, Any], model: torch.nn.Module, evals: dict[str, ImageSet], norm: tuple,
                tc: TrainConfig, calibrate: Path | None = None, log=print, temperature: float = 1.0) -> dict[str, Any]:
    """`out` with the per-class report of a run's final model on its test images, else its validation images, as
    `report` ({"on", **eval.classification_report}), and its macro_f1 and balanced_accuracy at the top; evaluated
    as fit() evaluated (the run's precision, TTA and memory format). calibrate: the checkpoint folder of that model,
    to calibrate it first (calibrate_checkpoint; `out["calibration"]`, and the report's ECE and NLL are then those of
    the calibrated probabilities); temperature: the model's own, when it was calibrated before."""
    from ..eval import final_report

    if calibrate is not None:
        out["calibration"] = calibrate_checkpoint(calibrate, model, evals, norm, tc, log)
        temperature = out["calibration"]["temperature"]
    shape = next(iter(evals.values())).images.shape if evals else None
    report = final_report(model, evals, norm, batch_size=eval_batch(tc, shape), precision=tc.precision,
                          tta_flip=tc.tta_flip, tta_translate=tc.tta_translate, channels_last=tc.channels_last,
                          temperature=temperature)
    if report is not None:
        out.update(macro_f1=report["macro_f1"], balanced_accuracy=report["balanced_accuracy"], ece=report["ece"],
                   nll=report["nll"], report=report)
    return out


def budgeted(run_dir: Path, make, log=print) -> dict[str, Any]:
    """The run's --budget-minutes plan: RUN/budget.json when the run made one before (a resumed run keeps its
    epochs), else make() (engine.budget.plan, from speeds measured now), saved there."""
    import json

    from ..utils import write_json
    path = Path(run_dir) / "budget.json"
    if path.is_file():
        return json.loads(path.read_text())
    from .. import distributed

    log("budget: timing each model for a few steps ...")
    p = distributed.broadcast_object(make())  # under torchrun every rank takes rank 0's epochs
    write_json(path, p)
    log(f"budget {p['budget_minutes']:g} min: epochs x{p['factor']:.3g} → "
        + ", ".join(f"{k} {v}" for k, v in p["epochs"].items()) + f" (predicted {p['predicted_minutes']:.1f} min)")
    return p


def report_run(run_dir: Path, log=print, ds: Dataset | None = None, split: Split | None = None) -> None:
    """RUN/report.html at the end of a run (fewlabels.report.page), from the run's data when given (not loaded
    again); a report that cannot be made logs one warning line and never fails the finished run."""
    from ..utils import is_main_process, release_memory
    from .report_page import write_report

    if not is_main_process():  # under torchrun rank 0 writes the report (and its model runs on rank 0 alone)
        return
    release_memory()
    try:
        path = write_report(Path(run_dir), data=(ds, split) if ds is not None and split is not None else None,
                            device="auto")
        log(f"report: {path}")
    except Exception as e:  # noqa: BLE001 - the run is done; its report is a convenience
        log(f"warning: the run's report was not written ({type(e).__name__}: {e}); `fewlabels report {run_dir}` "
            f"tries again")


def scored(metrics: dict[str, Any]) -> str:
    """'test accuracy 0.9, validation accuracy 0.8' for the splits a run's final metrics have."""
    parts = [f"{name} accuracy {metrics[f'{key}_acc']:.4f}" for key, name in (("test", "test"), ("val", "validation"))
             if metrics.get(f"{key}_acc") is not None]
    return ", ".join(parts) or "no validation or test images to score the model on"

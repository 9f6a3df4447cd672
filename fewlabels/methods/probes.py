"""`fewlabels probe equivariance` and `fewlabels probe fc-vs-cnn`: why convolution suits images, measured on the
user's own models and data. The computations are in :mod:`fewlabels.probes`; this module loads, trains and writes
the tables (JSON + Markdown) and plots into the run folder."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Options, group, opt
from ..console import Console
from ..data import load_dataset
from ..data.prepare import Budget, Source, prepare_data, val_set
from ..engine.checkpoint import load_model
from ..engine.config import TRAINING, Device, Seed, TrainConfig, eval_batch
from ..engine.loop import TrainSet, Watch, fit
from ..errors import FewLabelsError
from ..eval import accuracy, normalize, predict_logits
from ..probes.equivariance import equivariance_markdown, equivariance_probe, plot_equivariance
from ..probes.fc_vs_cnn import CONDITIONS, conditions, fc_vs_cnn_markdown, matched_pair, plot_fc_vs_cnn
from ..runs import run_folder, run_of, save_config
from ..targets import one_hot
from ..utils import atomic_write_text, pick_device, pick_dtype, write_json
from .common import Run, check_classes
from .supervised import Trained

# ---------------------------------------------------------------------------------------------------- equivariance


@group
class Equivariance:
    """Which shifts, on how many images."""

    # opt() turns a list default into a default_factory (no shared mutable default), which RUF009 cannot see
    shifts: list[int] = opt([1, 2, 4, 8],  # noqa: RUF009
                            "shifts in pixels (comma-separated), each applied horizontally and vertically", ge=1)
    circular: bool = opt(False, "circular shifts (torch.roll) instead of shifting in background and leaving the "
                         "border out of the comparison")
    margin: int = opt(4, "without --circular: input pixels left out on every side of the compared region "
                      "(ceil(margin / stride) pixels of each map)", ge=0)
    num_images: int = opt(512, "images to probe (a seeded random sample)", ge=1)


class ProbeEquivarianceCommand(Options):
    """Measure how each stage of a trained model responds to shifted inputs: the equivariance error per stage, the
    change of the pooled features and the share of predictions that change. --data defaults to the data of the
    model's run folder."""

    groups = (Trained, Equivariance, Source, Device, Seed, Run)
    hide = ("bad_images", "image_size", "mean", "std", "overwrite")
    defaults = {"data": None}
    renamed = {"model": "model_path"}


def _run_config(model_path: str) -> dict[str, Any]:
    """The config.yaml of the run that trained the model (see common.run_of), or {}."""
    run = run_of(model_path, "config.yaml")
    try:
        data = yaml.safe_load((run / "config.yaml").read_text()) if run is not None else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _nan_to_none(obj: Any) -> Any:
    # JSON has no NaN: undefined errors are written as null
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def probe_equivariance(cfg: ProbeEquivarianceCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the translation probe on a trained model; returns the table as a dict (also written to
    RUN/equivariance.{json,md,png}). Keyword arguments are the command-line options, e.g.
    `probe_equivariance(model_path="runs/train-1", shifts=[2, 4])`."""
    cfg = ProbeEquivarianceCommand.build(cfg, kwargs)
    log = Console.of(cfg)
    if not cfg.model_path:
        raise FewLabelsError("probe equivariance needs a model: pass a run folder or checkpoint (model_path)")
    if cfg.on == "val":
        raise FewLabelsError("probe equivariance takes --on test or --on train")
    if not cfg.shifts or any(k <= 0 for k in cfg.shifts):
        raise FewLabelsError(f"--shifts must be positive pixel counts, e.g. 1,2,4,8 (got {cfg.shifts})")
    if cfg.num_images < 1:
        raise FewLabelsError("--num-images must be at least 1")
    device = pick_device(cfg.device)
    model, meta = load_model(cfg.model_path, device)
    run_cfg = _run_config(cfg.model_path)
    data = cfg.data or run_cfg.get("data") or meta.get("dataset")
    if not data:
        raise FewLabelsError(f"cannot tell which data {cfg.model_path} was trained on: pass --data")
    ds = load_dataset(data, root=cfg.data_root or run_cfg.get("data_root"),
                      cache_dir=cfg.cache_dir or run_cfg.get("cache_dir"), image_size=run_cfg.get("image_size"))
    images = ds.test if cfg.on == "test" else ds.train
    if images is None:
        raise FewLabelsError(f"{data} has no test split: use --on train")
    check_classes(meta, ds.train.classes, f"the model at {cfg.model_path}", images)
    run_dir = run_folder(cfg.out, "probe-equivariance")
    cfg = save_config(run_dir, cfg, "probe equivariance")
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(images), generator=g)[:cfg.num_images].sort().values
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    x = normalize(images.images[idx], mean, std, channels_last=False)  # (N, C, H, W) float32
    log(f"probing {meta['model']} from {cfg.model_path} on {len(idx)} {cfg.on} images of {data}, shifts {cfg.shifts} "
        f"({'circular' if cfg.circular else 'background fill, border left out'})")
    result = equivariance_probe(model, x, cfg.shifts, labels=images.labels[idx], circular=cfg.circular,
                                margin=cfg.margin, fill=-mean / std)  # fill: black (pixel 0) in normalised units
    out = {"run_dir": str(run_dir), "model": cfg.model_path, "model_name": meta["model"], "data": data, "on": cfg.on,
           **result}
    write_json(run_dir / "equivariance.json", _nan_to_none(out))
    table = equivariance_markdown(result)
    atomic_write_text(run_dir / "equivariance.md", f"# Translation probe: {meta['model']} on {data}\n\n" + table)
    plot_equivariance(result, run_dir / "equivariance.png", title=f"{meta['model']} on {data} ({cfg.on})")
    log(table)
    log(f"written: {run_dir / 'equivariance.md'}, equivariance.json, equivariance.png")
    return out


# ---------------------------------------------------------------------------------------------------- FC vs CNN


@group
class FcVsCnn:
    """The two networks and the conditions they are compared under."""

    cnn: str = opt("cnn-tiny", "the CNN (any model name); the MLP's hidden width is chosen to match its parameters")
    mlp_layers: int = opt(2, "hidden layers of the MLP (all of one width)", ge=1)
    conditions: list[str] = opt(list(CONDITIONS),  # noqa: RUF009
                                "which of standard, shifted (train left, test right), permuted (one fixed pixel "
                                "permutation) to run, comma-separated")
    permutation_seed: int = opt(0, "seed of the pixel permutation", ge=0, le=2**31 - 1)


class ProbeFcVsCnnCommand(Options):
    """Train an FC network and a CNN of matched size three ways: as is; objects on the left for training and on
    the right for testing; one fixed random pixel permutation for both. Writes a table and a bar chart."""

    groups = (Run, FcVsCnn, Source, Budget, *TRAINING)
    hide = ("overwrite", "unlabelled_ratio")  # no pseudo-labelled images to mix in
    # Translation augmentation (random crops) would teach the FC net the shifts the probe is about, and flips change
    # digits: both off unless asked for. No validation split: nothing is selected, the last epoch is tested.
    defaults = {"epochs": 10, "augment": "none", "hflip": False, "val": 0.0}


def _train_and_test(model: torch.nn.Module, meta: dict[str, Any], train_set: TrainSet, tests: dict[str, Any],
                    cfg: ProbeFcVsCnnCommand, norm: tuple, run_dir: Path, log: Any) -> dict[str, float]:
    """Fit one model and return its test accuracy under each of `tests` ({name: (images, labels)})."""
    tc = TrainConfig.of(cfg)
    result = fit(model, train_set, tc, watch=Watch(run_dir=run_dir, meta=meta, log=log))
    device = pick_device(tc.device)
    accs = {}
    for name, (images, labels) in tests.items():
        logits = predict_logits(result.model, images, *norm, batch_size=eval_batch(tc, images.shape), device=device,
                                dtype=pick_dtype(tc.precision, device), channels_last=tc.channels_last)
        accs[name] = accuracy(logits, labels)
    return accs


def probe_fc_vs_cnn(cfg: ProbeFcVsCnnCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Train and test an FC net and a CNN of matched size under the standard, shifted and permuted conditions;
    returns {"fc": {condition: test accuracy}, "cnn": {...}, "params": ..., ...} (also written to
    RUN/fc_vs_cnn.{json,md,png}). Keyword arguments are the command-line options, e.g.
    `probe_fc_vs_cnn(data="digits", epochs=5)`."""
    cfg = ProbeFcVsCnnCommand.build(cfg, kwargs)
    log = Console.of(cfg)
    unknown = [c for c in cfg.conditions if c not in CONDITIONS]
    if unknown or not cfg.conditions:
        raise FewLabelsError(f"unknown condition {', '.join(unknown) or '(none given)'}: choose from "
                             f"{', '.join(CONDITIONS)}")
    run_dir = run_folder(cfg.out, "probe-fc-vs-cnn")
    cfg = save_config(run_dir, cfg, "probe fc-vs-cnn")
    ds, split = prepare_data(cfg, run_dir, log)
    test = ds.test if ds.test is not None else val_set(ds, split)
    if test is None:
        raise FewLabelsError(f"{cfg.data} has no test split: hold out validation images with --val to test on")
    train = ds.train.subset(split.labelled)
    k = ds.train.num_classes
    chans, h, w = train.image_shape
    train_targets = one_hot(train.labels, k, cfg.label_smoothing)
    norm = (ds.mean, ds.std)
    out: dict[str, Any] = {"fc": {}, "cnn": {}, "params": {"cnn_name": cfg.cnn, "fc": {}}, "mlp_hidden": {},
                           "minutes": {"fc": {}, "cnn": {}}}
    for cond in [name for name in CONDITIONS if name in cfg.conditions]:
        train_tf, test_tfs = conditions(h, w, cfg.permutation_seed)[cond]
        x_train = train_tf(train.images)  # (N, C, H, W') uint8; W' = 2W on the shifted canvas
        mlp, cnn, info = matched_pair(cfg.cnn, k, chans, tuple(x_train.shape[-2:]), mlp_layers=cfg.mlp_layers,
                                      seed=cfg.seed)
        gap = info["mlp_params"] / info["cnn_params"] - 1
        log(f"[{cond}] {x_train.shape[-2]}×{x_train.shape[-1]} images: {cfg.cnn} {info['cnn_params']:,} parameters, "
            f"mlp {info['mlp_hidden']} {info['mlp_params']:,} parameters ({100 * gap:+.1f}%)")
        out["params"]["cnn"] = info["cnn_params"]
        out["params"]["fc"][cond] = info["mlp_params"]
        out["mlp_hidden"][cond] = info["mlp_hidden"]
        train_set = TrainSet(x_train, train_targets, torch.ones(len(train), dtype=torch.bool), norm=norm)
        tests = {name: (tf(test.images), test.labels) for name, tf in test_tfs.items()}
        base_meta = {"classes": ds.train.classes, "in_chans": chans, "image_size": list(x_train.shape[-2:]),
                     "mean": list(ds.mean), "std": list(ds.std), "dataset": ds.name, "probe_condition": cond}
        for key, model, name, kw in (("fc", mlp, "mlp", info["mlp_kwargs"]), ("cnn", cnn, cfg.cnn, {})):
            t0 = time.perf_counter()
            log(f"[{cond}] training {name}")
            accs = _train_and_test(model, {**base_meta, "model": name, "model_kwargs": kw}, train_set, tests, cfg,
                                   norm, run_dir / f"{cond}-{key}", log)
            out[key].update(accs)
            out["minutes"][key][cond] = round((time.perf_counter() - t0) / 60, 3)
            log(f"[{cond}] {name}: " + ", ".join(f"{n} test accuracy {a:.4f}" for n, a in accs.items()))
    out.update({"run_dir": str(run_dir), "data": cfg.data, "dataset": ds.name, "train_images": len(train),
                "test_images": len(test), "image_size": [h, w], "epochs": cfg.epochs,
                "conditions": [name for name in CONDITIONS if name in cfg.conditions],
                "train_config": TrainConfig.of(cfg).asdict()})
    write_json(run_dir / "fc_vs_cnn.json", out)
    table = fc_vs_cnn_markdown(out)
    atomic_write_text(run_dir / "fc_vs_cnn.md", f"# FC vs CNN on {ds.name}\n\n" + table + _fc_vs_cnn_note(out))
    plot_fc_vs_cnn(out, run_dir / "fc_vs_cnn.png", title=f"FC vs CNN on {ds.name} ({len(train)} training images)")
    log(table)
    log(f"written: {run_dir / 'fc_vs_cnn.md'}, fc_vs_cnn.json, fc_vs_cnn.png")
    return out


def _fc_vs_cnn_note(out: dict[str, Any]) -> str:
    h, w = out["image_size"]
    return (f"\nTest accuracy after {out['epochs']} epochs on {out['train_images']} training images, "
            f"{out['test_images']} test images. shifted: each {h}×{w} image on a {h}×{2 * w} canvas, in its left "
            "half for training and its right half for testing; permuted: one fixed random permutation of the pixel "
            "positions for training and test. The MLP's width is re-chosen per condition to match the CNN's "
            "parameter count (its first layer grows with the canvas).\n")

"""`fewlabels export`: a trained model as one ONNX or TorchScript file that runs without fewlabels.

The exported graph takes images as they are stored, (N, C, H, W) with N free and C, H, W those the model was trained
at, and returns raw logits (N, K); the normalisation (mean, std) is inside the graph:

    --input-dtype uint8   raw pixels 0-255 (uint8); the graph computes (x / 255 - mean) / std
    --input-dtype float   float32 pixels in 0-1 (the image divided by 255); the graph computes (x - mean) / std

Beside the file, `<file>.json` (e.g. model.onnx.json) holds what a user of the file needs: class names in logit
order, the input's name, dtype, layout and size, the normalisation already applied, and the calibration temperature.
The graph returns the uncalibrated logits; calibrated probabilities are softmax(logits / temperature) (temperature
1.0 when the model was not calibrated). The same description is embedded in the file (ONNX metadata_props key
"fewlabels"; TorchScript extra file "fewlabels.json").

ONNX uses PyTorch's TorchScript-based exporter (`dynamo=False`): it runs offline on CPU with only `onnx` installed,
writes the opset asked for (17 by default; the torch.export-based exporter needs onnxscript, writes opset 18, and its
down-conversion to 17 failed on timm's resnet18) and exported these models 4-10x faster on CPU. The cnn-*-p2 models
read their map size as Python ints so that a trace can record it. Every export is checked before it is written: the
file is loaded back (onnxruntime / torch.jit) and run on a few random images at another batch size than the trace's,
against the PyTorch model; the largest logit difference is in the sidecar ("check").

`predict` takes an exported .onnx file as its model (read with onnxruntime, classes and size from the sidecar).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Options, group, opt
from ..engine.checkpoint import find_checkpoint, load_model
from ..errors import FewLabelsError
from ..runs import output_file, run_of
from ..utils import atomic_write_bytes, write_json
from .common import Format, Run
from .exported import INPUT_NAME, OUTPUT_NAME, need, sidecar_path
from .supervised import Trained

SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
TORCHSCRIPT_MAX_OPSET = 20  # torch.onnx's TorchScript-based exporter writes opsets up to 20
CHECK_TOLERANCE = 1e-3  # largest |logit difference| of the exported file against PyTorch before a warning


@group
class Export:
    """What `export` writes."""

    input_dtype: str = opt("uint8", "what the file takes, (N, C, H, W) at the training size: uint8 = raw 0-255 pixels, "
                           "float = float32 pixels in 0-1 (image / 255); normalised inside the graph either way",
                           choices=("uint8", "float"))
    opset: int = opt(17, "ONNX opset, 17 to 20 (onnx only)", ge=17, le=TORCHSCRIPT_MAX_OPSET)
    checkpoint: str = opt("best", "which checkpoint of a run folder: best or last", choices=("best", "last"))


class ExportCommand(Options):
    """Export a trained model as an ONNX or TorchScript file with the normalisation inside the graph, and a sidecar
    JSON (<file>.json) with the class names, input size and dtype, and calibration temperature. --out defaults to
    RUN/export/model.onnx (model.pt for torchscript); the graph returns raw logits (divide by the sidecar's
    temperature for calibrated probabilities)."""

    groups = (Trained, Format, Export, Run)
    hide = ("on",)
    defaults = {"format": "onnx"}
    allowed = {"format": ("onnx", "torchscript")}


class Normalised(nn.Module):
    """The model behind its input conversion: uint8 0-255 or float 0-1 (N, C, H, W) in, logits out."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], input_dtype: str) -> None:
        super().__init__()
        self.model = model
        self.uint8 = input_dtype == "uint8"
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.uint8:
            x = x / 255.0  # as fewlabels.eval.normalize does
        return self.model((x - self.mean) / self.std)


def default_out(model_path: str, fmt: str, checkpoint: Path) -> Path:
    """RUN/export/model.onnx (model.pt) for a model of a run folder, else CHECKPOINT/export/model.onnx."""
    run = run_of(model_path, "config.yaml")
    return (run or checkpoint) / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")


@contextlib.contextmanager
def _quiet_tracing():
    """The exporters' deprecation notes and the trace's notes on shapes read as constants (C, H, W are fixed; the
    batch stays free) say nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def export(cfg: ExportCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Export a trained model (run folder or checkpoint) as ONNX or TorchScript; returns the sidecar's content with
    "file" and "sidecar" (the paths written). E.g. `export(model_path="runs/digits", format="onnx")`."""
    cfg = ExportCommand.build(cfg, kwargs)
    log = (lambda *_: None) if cfg.quiet else print
    if not cfg.model_path:
        raise FewLabelsError("export needs a model: pass a run folder or checkpoint")
    if cfg.format == "onnx":
        need("onnx")
        need("onnxruntime")
    elif "opset" in cfg.set_by_user(["opset"]):
        raise FewLabelsError("--opset is for --format onnx; a TorchScript file has no opset: leave it out")
    folder = find_checkpoint(cfg.model_path, cfg.checkpoint)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg.model_path, cfg.format, folder)
    out = output_file(out, cfg.overwrite, SUFFIXES[cfg.format])
    side = output_file(sidecar_path(out), cfg.overwrite)
    model, meta = load_model(folder, "cpu")
    # a float32, eval-mode, contiguous CPU copy whatever the training used (bf16 autocast, channels_last, CUDA)
    model = model.float().to(memory_format=torch.contiguous_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    c, (h, w) = int(meta["in_chans"]), (int(v) for v in meta["image_size"])
    wrapped = Normalised(model, meta["mean"], meta["std"], cfg.input_dtype).eval()
    example = _random_images(2, (c, h, w), cfg.input_dtype, seed=0)
    info = _describe(cfg, meta, folder, (c, h, w))
    data = (_onnx_bytes(wrapped, example, cfg.opset, info) if cfg.format == "onnx"
            else _torchscript_bytes(wrapped, example, info))
    check = _check(wrapped, data, cfg.format, (c, h, w), cfg.input_dtype)
    info["check"] = check
    if check["max_abs_logit_diff"] > CHECK_TOLERANCE:
        log(f"warning: the exported model's logits differ from PyTorch's by up to {check['max_abs_logit_diff']:.2g} "
            f"on random images (more than {CHECK_TOLERANCE:g})")
    atomic_write_bytes(out, data)
    write_json(side, info)
    log(f"exported {meta['model']} ({len(meta['classes'])} classes, {cfg.input_dtype} input {c}x{h}x{w}) to {out} "
        f"({len(data) / 2**20:.1f} MB) and {side.name}; max |logit difference| vs PyTorch "
        f"{check['max_abs_logit_diff']:.2g}")
    return {**info, "file": str(out), "sidecar": str(side)}


def _describe(cfg: ExportCommand, meta: dict[str, Any], folder: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    c, h, w = shape
    fmt = cfg.format
    dtype = "uint8" if cfg.input_dtype == "uint8" else "float32"
    return {
        "format": fmt,
        **({"opset": cfg.opset} if fmt == "onnx" else {}),
        "classes": list(meta["classes"]),
        "input": {"name": INPUT_NAME, "dtype": dtype, "shape": ["batch", c, h, w], "layout": "NCHW",
                  "range": "0-255" if cfg.input_dtype == "uint8" else "0-1",
                  "normalised_in_graph": True},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(meta["classes"])],
                   "meaning": "raw logits; calibrated probabilities = softmax(logits / temperature)"},
        "in_chans": c,
        "image_size": [h, w],
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "temperature": float(meta.get("temperature", 1.0)),
        "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs", {}),
        "source": str(folder),
        "fewlabels_version": _version(),
        "torch_version": torch.__version__.split("+")[0],
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fewlabels")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "unknown"


def _random_images(n: int, shape: tuple[int, int, int], input_dtype: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    return x if input_dtype == "uint8" else x.float() / 255


def _onnx_bytes(wrapped: nn.Module, example: torch.Tensor, opset: int, info: dict[str, Any]) -> bytes:
    import onnx

    buf = io.BytesIO()
    try:
        with _quiet_tracing(), torch.no_grad():
            torch.onnx.export(wrapped, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as e:  # an operator without an ONNX counterpart at this opset, a model that cannot be traced
        raise FewLabelsError(f"could not export {info['model']} to ONNX (opset {opset}): {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}; try a higher --opset or "
                             f"--format torchscript") from None
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fewlabels", json.dumps(info)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(wrapped: nn.Module, example: torch.Tensor, info: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    try:
        with _quiet_tracing(), torch.no_grad():
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
            torch.jit.save(traced, buf, _extra_files={"fewlabels.json": json.dumps(info)})
    except Exception as e:
        raise FewLabelsError(f"could not export {info['model']} to TorchScript: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}; try --format onnx") from None
    return buf.getvalue()


def _check(wrapped: nn.Module, data: bytes, fmt: str, shape: tuple[int, int, int], input_dtype: str
           ) -> dict[str, Any]:
    """The exported file against PyTorch on a few random images, at a batch size other than the trace's."""
    x = _random_images(3, shape, input_dtype, seed=1)
    with torch.no_grad():
        ref = wrapped(x)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    else:
        with _quiet_tracing(), torch.no_grad():
            got = torch.jit.load(io.BytesIO(data))(x)
    return {"images": len(x), "max_abs_logit_diff": float((got.float() - ref).abs().max())}

"""Files written by `fewlabels export`, read back: their sidecar JSON, and an .onnx file run with onnxruntime as
`predict` runs a checkpoint (see methods/export.py for what the files hold)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FewLabelsError
from ..eval import EVAL_BATCH_SIZE, check_tta_translate

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def sidecar_path(path: str | Path) -> Path:
    """model.onnx → model.onnx.json."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise FewLabelsError(f"{module} is not installed: `pip install fewlabels[export]` (or `pip install onnx "
                             f"onnxruntime`) and run again") from None


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The description of an exported file: its sidecar JSON, else the copy embedded in the ONNX file."""
    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            info = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise FewLabelsError(f"{side} is unreadable ({e}): export the model again with `fewlabels export`") \
                from None
    else:
        info = None
        if path.suffix.lower() == ".onnx":
            onnx = need("onnx")
            try:
                proto = onnx.load(str(path), load_external_data=False)
            except Exception as e:
                raise FewLabelsError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from None
            found = {p.key: p.value for p in proto.metadata_props}.get("fewlabels")
            info = json.loads(found) if found else None
        if info is None:
            raise FewLabelsError(f"{path} has no {side.name} beside it (class names, input size): it was not "
                                 f"written by `fewlabels export`; export the model with it")
    missing = [k for k in ("classes", "in_chans", "image_size", "input") if k not in info]
    if missing:
        raise FewLabelsError(f"{side} lacks {', '.join(missing)}: export the model again with `fewlabels export`")
    return info


class OnnxClassifier:
    """An exported .onnx file run with onnxruntime: uint8 images in, float32 logits out (as predict_logits)."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ort = need("onnxruntime")
        path = Path(path).expanduser()
        if not path.is_file():
            raise FewLabelsError(f"no model at {path}: pass a fewlabels run folder, checkpoint or exported .onnx file")
        self.meta = read_sidecar(path)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") or device == "auto":
            providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()] + providers
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:
            raise FewLabelsError(f"onnxruntime cannot load {path}: {type(e).__name__}: {e}") from None
        self.float_input = self.meta["input"].get("dtype", "uint8") != "uint8"
        self.input = self.meta["input"].get("name", INPUT_NAME)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if self.float_input else x.contiguous()
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0]).float()

    def _views(self, x: torch.Tensor, flip: bool) -> torch.Tensor:
        z = self._run(x)
        return 0.5 * (z + self._run(x.flip(3))) if flip else z

    def logits(self, images: torch.Tensor, tta_flip: bool = False, tta_translate: int = 0,
               batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
        """As fewlabels.eval.predict_logits on uint8 (N, C, H, W), with the same TTA: the normalisation is a
        per-channel affine map, so mirroring and reflection padding the raw pixels is the same as doing it after."""
        t = int(tta_translate)
        check_tta_translate(t, images.shape[2:])
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size]
            z = self._views(x, tta_flip)
            if t > 0:
                p = F.pad(x.float(), (t, t, t, t), mode="reflect").to(torch.uint8)  # integers: exact
                shifted = [p[:, :, :-2 * t, :-2 * t], p[:, :, 2 * t:, 2 * t:]]
                z = 0.5 * z + 0.25 * sum(self._views(v.contiguous(), tta_flip) for v in shifted)
            out.append(z)
        return torch.cat(out) if out else torch.empty(0)

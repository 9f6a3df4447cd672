"""Load weights from files other code wrote: plain or nested state dicts, DataParallel prefixes, safetensors,
fewlabels checkpoints. Every tensor whose name and shape match is loaded; the rest is reported, never guessed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import FewLabelsError

TORCH_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt")
# Keys under which training scripts nest the weights, most specific first. The raw weights win over EMA copies
# so that the same file always gives the same model; pass the EMA state dict explicitly if you want it.
NESTED_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "ema", "state_dict_ema", "model_ema")
# A checkpoint folder (model.safetensors + model.json), or a run folder holding checkpoints/{best,last}.
CHECKPOINT_FILES = ("model.safetensors", "checkpoints/best/model.safetensors", "checkpoints/last/model.safetensors",
                    "best/model.safetensors", "last/model.safetensors")
MAX_LISTED = 12


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _listing(keys: list[str], notes: Mapping[str, str] | None = None) -> str:
    """Keys one per line (with a note each when given), cut after MAX_LISTED so a whole-model mismatch stays short."""
    lines = [f"    {k}" + (f"  ({notes[k]})" if notes and k in notes else "") for k in keys[:MAX_LISTED]]
    if len(keys) > MAX_LISTED:
        lines.append(f"    ... and {len(keys) - MAX_LISTED} more")
    return "\n".join(lines)


@dataclass
class LoadReport:
    """What load_pretrained did. dropped: in the file but not used (not in the model, or another shape);
    new: model tensors the file did not provide, left at their fresh initialisation."""

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # dropped key → why

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.new)
        parts = [f"loaded {len(self.loaded)}/{total} model tensors from {self.source}"]
        if self.dropped:
            parts.append(f"  dropped {len(self.dropped)} tensors of the file:\n{_listing(self.dropped, self.reasons)}")
        if self.new:
            parts.append(f"  {len(self.new)} model tensors newly initialised:\n{_listing(self.new)}")
        if not self.dropped and not self.new:
            parts.append("  every tensor matched")
        return "\n".join(parts)


def resolve_weights_path(source: str | Path) -> Path:
    """The weights file for `source`: the file itself, or model.safetensors in a checkpoint/run folder (best first)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FewLabelsError(f"weights file {path} does not exist: pass a .pth/.pt/.th/.safetensors file or a "
                             f"fewlabels checkpoint or run folder")
    if path.is_dir():
        for rel in CHECKPOINT_FILES:
            if (path / rel).is_file():
                return path / rel
        raise FewLabelsError(f"folder {path} holds no model weights: expected one of {', '.join(CHECKPOINT_FILES)}")
    return path


def _read_file(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix not in (*TORCH_SUFFIXES, ".safetensors"):
        raise FewLabelsError(f"cannot read weights from {path}: expected {'/'.join(TORCH_SUFFIXES)} or .safetensors")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a weights file must never run code; it refuses anything but tensors and plain containers.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise pickle, zip, safetensors and OS errors of many types
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # torch's own advice (weights_only=False) would run the file's code: not an option here
            raise FewLabelsError(
                f"{path} holds Python objects besides tensors ({found.group(1)}), and fewlabels never unpickles "
                f"objects (a file can run code when unpickled). Save the weights alone, torch.save(model.state_dict(), "
                f"path), or as safetensors, where the file comes from") from None
        unpickler = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        if unpickler:  # another refusal of the safe loader: its whole reason, without torch's advice to unpickle
            raise FewLabelsError(f"{path} cannot be loaded as plain weights: {unpickler.group(1).strip()}. fewlabels "
                                 f"never unpickles objects (a file can run code when unpickled): save the weights "
                                 f"alone, torch.save(model.state_dict(), path), or as safetensors") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise FewLabelsError(f"could not read weights file {path}: it is not a PyTorch or safetensors weights file, or "
                             f"it is damaged ({type(e).__name__}: {first})") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: descend through state_dict/model/... wrappers, keep the tensors."""
    while isinstance(obj, Mapping):
        key = next((k for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        what = f"keys {list(obj)[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise FewLabelsError(f"{path} holds no state dict of tensors (found {what})")
    return tensors


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    # Repeat: DataParallel inside another wrapper saves "module.module.".
    while prefixes and key.startswith(prefixes):
        key = key[len(next(p for p in prefixes if key.startswith(p))):]
    return key


def read_state_dict(source: str | Path, prefix_strip: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """Read any supported weights file or checkpoint folder into a flat {name: tensor} dict on the CPU."""
    # Empty prefixes are dropped: stripping "" would never end.
    prefixes = tuple(p for p in ((prefix_strip,) if isinstance(prefix_strip, str) else prefix_strip) if p)
    path = resolve_weights_path(source)
    state = _unwrap(_read_file(path), path)
    return {_strip(k, prefixes): v for k, v in state.items()}


def _is_counter(key: str) -> bool:
    # BatchNorm's num_batches_tracked only matters with momentum=None; files from other code often lack it.
    return key.endswith("num_batches_tracked")


def compare_state(file_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                  source: str = "") -> LoadReport:
    """Match file tensors to model tensors by name and shape, ignoring num_batches_tracked counters."""
    report = LoadReport(source=source)
    for key, value in file_state.items():
        if _is_counter(key):
            continue
        if key not in model_state:
            report.dropped.append(key)
            report.reasons[key] = "not in the model"
        elif _shape(value) != _shape(model_state[key]):
            report.dropped.append(key)
            report.reasons[key] = f"shape {_shape(value)} in the file, {_shape(model_state[key])} in the model"
        else:
            report.loaded.append(key)
    loaded = set(report.loaded)
    report.new = [k for k in model_state if k not in loaded and not _is_counter(k)]
    return report


def _strict_error(report: LoadReport) -> FewLabelsError:
    missing = [k for k in report.new if k not in report.reasons]
    parts = [f"strict load of {report.source} failed: the file does not match the model"]
    if report.dropped:
        parts.append(f"  in the file but not usable:\n{_listing(report.dropped, report.reasons)}")
    if missing:
        parts.append(f"  missing from the file:\n{_listing(missing)}")
    parts.append("  load with strict=False to keep what matches and initialise the rest (e.g. a new head)")
    return FewLabelsError("\n".join(parts))


def load_pretrained(model: nn.Module, source: str | Path, *, strict: bool = False,
                    prefix_strip: tuple[str, ...] = ("module.",)) -> LoadReport:
    """Copy the weights in `source` into `model` in place and say what happened.

    source: .pth/.pt/.th/.bin/.ckpt (torch.load with weights_only=True), .safetensors, a fewlabels checkpoint folder
    (model.safetensors + model.json) or a run folder (checkpoints/best preferred over checkpoints/last). The state
    dict may be nested under state_dict/model/model_state/ema; prefixes in `prefix_strip` are removed from its keys.

    Non-strict: tensors matching in name and shape load; others are reported as dropped (file) or new (model).
    Strict: any difference raises FewLabelsError listing the keys. Loading nothing at all, or nothing but the
    classifier, always raises, since it means the file is for another architecture.
    """
    path = resolve_weights_path(source)
    file_state = read_state_dict(path, prefix_strip)
    report = compare_state(file_state, model.state_dict(), str(path))
    if strict and (report.dropped or report.new):
        raise _strict_error(report)
    if not report.loaded:
        raise FewLabelsError(f"no tensor of {path} matches the model: is it for another architecture? "
                             f"file keys: {list(file_state)[:5]}, model keys: {list(model.state_dict())[:5]}")
    heads = tuple(getattr(model, "head_prefixes", ()))
    if heads and all(k.startswith(heads) for k in report.loaded):
        raise FewLabelsError(f"only the classifier of {path} matches the model ({', '.join(report.loaded)}), none of "
                             f"its body: is it for another architecture? file keys: {list(file_state)[:5]}, model "
                             f"keys: {list(model.state_dict())[:5]}")
    model.load_state_dict({k: file_state[k] for k in report.loaded}, strict=False)
    return report

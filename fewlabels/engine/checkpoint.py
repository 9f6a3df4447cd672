"""Checkpoints: weights as safetensors plus a JSON that says how to rebuild and use the model.

Layout of one checkpoint folder (`RUN/checkpoints/last/`, `RUN/checkpoints/best/`):
    model.safetensors   the weights a user gets (the EMA weights when EMA is on)
    model.json          model name and settings, class names, normalisation, image size, metrics, and the
                        calibration `temperature` once fitted (fewlabels calibrate / --calibrate)
    train_state.pt      (last/ only) optimizer, raw weights, RNG states, epoch: what `resume` needs. Plain tensors and
                        numbers, loaded with weights_only=True.

A checkpoint folder is replaced as a whole: written to `NAME.new/`, then `NAME` → `NAME.old`, `NAME.new` → `NAME`,
`NAME.old` removed. A crash at any point leaves either the old or the new folder readable (see `_resolve`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import FewLabelsError
from ..utils import pick_device, write_json


def _state_for_save(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared/non-contiguous storage: save contiguous copies
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> None:
    folder = Path(folder)
    new = folder.with_name(folder.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        save_file(_state_for_save(model), str(new / "model.safetensors"))
        write_json(new / "model.json", meta)
        if train_state is not None:
            torch.save(train_state, new / "train_state.pt")
    except (OSError, FewLabelsError) as e:  # a full disk, a quota, a read-only mount: the old checkpoint stays
        shutil.rmtree(new, ignore_errors=True)
        raise _write_error(folder, e, _bytes(model) * (3 if train_state is not None else 1)) from None
    _swap_in(new, folder)


def _bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _write_error(folder: Path, e: BaseException, need: int) -> FewLabelsError:
    why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
    kept = f"the last good one ({folder}) is intact" if folder.exists() else "no earlier one was saved"
    return FewLabelsError(f"could not write the checkpoint {folder}: {why}. It needs about {need / 2**20:.0f} MB free "
                          f"on that disk; {kept}. Free space (or give --out on another disk) and rerun the same "
                          f"command to resume")


def copy_checkpoint(src: Path, folder: Path) -> None:
    """Copy a checkpoint folder over another as save_checkpoint writes one: the old or the new one stays readable."""
    src, folder = Path(src), Path(folder)
    new = folder.with_name(folder.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_resolve(src) or src, new)
    _swap_in(new, folder)


def _swap_in(new: Path, folder: Path) -> None:
    old = folder.with_name(folder.name + ".old")
    _fsync_folder(new)  # on disk before the renames: after a power cut either folder is whole, not an empty file
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    new.rename(folder)
    _fsync_folder(folder.parent, files=False)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path, files: bool = True) -> None:
    """fsync the files of a folder, then the folder itself (its entries); a no-op where the OS does not allow it."""
    paths = [f for f in folder.iterdir() if f.is_file()] if files else []
    for path in [*paths, folder]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass  # e.g. directories on Windows
        finally:
            os.close(fd)


def _resolve(folder: Path) -> Path | None:
    """The readable checkpoint folder for `folder`, recovering from a crash mid-replace."""
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if (cand / "model.safetensors").is_file() and (cand / "model.json").is_file():
            return cand
    return None


def find_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint folder from a run folder, a checkpoint folder, or a model.safetensors file."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise FewLabelsError(f"no model given ({path!r}): pass a fewlabels run folder, a checkpoint folder or "
                             f"model.safetensors")
    if prefer not in ("best", "last"):
        raise FewLabelsError(f"prefer must be 'best' or 'last', got {prefer!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FewLabelsError(f"no model at {p}: pass a fewlabels run folder, a checkpoint folder or model.safetensors")
    p = p.absolute()  # "model.safetensors" in the working folder has the parent Path("."), which has no name
    if p.is_file():
        if p.name not in ("model.safetensors", "model.json") or not (p.parent / "model.json").is_file():
            raise FewLabelsError(f"{path} is not a fewlabels checkpoint (a model.safetensors beside its model.json): "
                                 "pass a fewlabels run folder or checkpoint folder. Weights from elsewhere (a .pth, "
                                 ".th or .safetensors file) go to `--pretrained` of train or transfer")
        p = p.parent
    order = [prefer, "last" if prefer == "best" else "best"]
    cands = [p] + [p / "checkpoints" / n for n in order] + [p / n for n in order]
    for c in cands:
        r = _resolve(c)
        if r is not None:
            return r
    raise FewLabelsError(f"{path} holds no fewlabels checkpoint (model.safetensors + model.json); train one with "
                         f"`fewlabels train --out {path}` or point to the run folder that has it")


def read_meta(path: str | Path) -> dict[str, Any]:
    folder = find_checkpoint(path)
    try:
        return json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise FewLabelsError(f"checkpoint metadata {folder / 'model.json'} is unreadable ({e})") from None


def update_meta(path: str | Path, **changes: Any) -> Path:
    """Change a checkpoint's model.json (atomically; the weights stay as they are), e.g. its calibration
    temperature; returns the checkpoint folder."""
    folder = find_checkpoint(path)
    write_json(folder / "model.json", {**read_meta(folder), **changes})
    return folder


def load_model(path: str | Path, device: torch.device | str = "cpu", prefer: str = "best"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a fewlabels checkpoint, weights loaded strictly; returns (model in eval mode, meta)."""
    from ..models import create_model

    folder = find_checkpoint(path, prefer)
    meta = read_meta(folder)
    missing = [k for k in ("model", "classes", "in_chans") if k not in meta]
    if missing:
        raise FewLabelsError(f"checkpoint metadata {folder / 'model.json'} lacks {', '.join(missing)}: it was not "
                             f"written by fewlabels, or was edited; use the run's other checkpoint or retrain")
    model = create_model(meta["model"], num_classes=len(meta["classes"]), in_chans=meta["in_chans"],
                         **meta.get("model_kwargs", {}))
    try:
        state = load_file(str(folder / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise FewLabelsError(f"could not load weights from {folder / 'model.safetensors'}: {e}") from None
    if not isinstance(device, torch.device):
        device = pick_device(str(device))
    return model.to(device).eval(), meta


def load_train_state(folder: Path) -> dict[str, Any] | None:
    r = _resolve(Path(folder))
    if r is None or not (r / "train_state.pt").is_file():
        return None
    try:
        return torch.load(r / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise FewLabelsError(f"the resume state {r / 'train_state.pt'} is unreadable ({e}); delete the folder "
                             f"{r} to start the run again") from None

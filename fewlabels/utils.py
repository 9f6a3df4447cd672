"""Small shared helpers: device and precision choice, seeding, atomic writes, run metadata."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import FewLabelsError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU (MPS is opt-in: its bf16 support varies). Under torchrun, 'auto' and
    'cuda' mean this process's own GPU, cuda:LOCAL_RANK."""
    if name in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise FewLabelsError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FewLabelsError(f"--device {name}: this PyTorch sees no CUDA GPU; use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FewLabelsError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPU(s) "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise FewLabelsError(f"--device {name}: MPS is not available here; use --device auto or cpu")
    return device


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_malloc_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Let glibc malloc keep and reuse freed blocks below 32 MB instead of returning them to the OS.

    With glibc's defaults the large tensors of a CPU training step (activations, gradients, augmentation
    scratch) often come from fresh mmaps or a just-trimmed heap and pay a page fault per 4 kB page on first touch;
    on a VM those faults are expensive. Raising the mmap threshold to 32 MB (its maximum), the trim threshold to
    1 GB and the top pad to 64 MB makes the heap keep those pages: the effect PyTorch's CPU performance guide gets
    from jemalloc or tcmalloc, without an LD_PRELOAD. Measured in benchmarks/results/cpu_allocator.md. The cost:
    the process keeps up to ~1 GB of freed memory instead of handing it back.

    Process-wide and not undoable, so it is applied once, only on Linux with glibc, and never when the environment
    has FEWLABELS_MALLOC_TUNING=0. Returns whether the tuning is in effect. The training loop calls it for CPU runs.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get("FEWLABELS_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
              and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1)
    except (OSError, AttributeError):
        return False
    _malloc_tuned = bool(ok)
    return _malloc_tuned


def release_memory() -> None:
    """Hand freed memory back to the system between the phases of a run (training, pool labelling, the report).
    glibc keeps freed heap pages for reuse (tune_cpu_allocator raises its trim threshold to 1 GB), so each phase's
    peak would otherwise stack on the pages the previous phases freed; malloc_trim(0) returns them (and gc first frees
    tensors held in reference cycles). A few milliseconds; nothing on other platforms."""
    import gc

    gc.collect()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for 'auto' | 'bf16' | 'fp16' | 'fp32' (None means no autocast).

    'auto' picks bf16 on CUDA GPUs that support it and on CPUs with bf16 matrix units, else fp32. With
    channels_last, bf16 trained cnn-m 2.0-2.7x faster than fp32 on a 2-core Xeon with AMX and 2.0x on a 2-core AMD
    EPYC with AVX512-BF16 (benchmarks/results/train_throughput*.json).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs ahead of Python): call before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A (small) CPU tensor on `device` without stalling the GPU's queue.

    A blocking ``.to(device)`` waits until the GPU has finished every kernel queued before it, and a non_blocking
    copy from ordinary (pageable) memory may do the same (CUDA's API synchronisation notes: the driver may sync with
    the stream to stage it). The batched augmentation sends 38 such parameters for a `strong` batch (magnitudes,
    offsets, index vectors), 7 of them were blocking: each can drain the queue that Python fills ahead of the GPU.
    Staged through pinned memory the copy is queued like a kernel. Elsewhere a plain ``.to``.
    """
    device = torch.device(device)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device, non_blocking=True)
    return t.contiguous().pin_memory().to(device, non_blocking=True)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rank() -> int:
    """This process's rank under torchrun (RANK), 0 in a plain run. Only rank 0 logs and writes run folders."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that a reader (or a crash) sees either the old content or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:  # mkstemp makes the file 0600: give it the mode of the file it replaces, else what open() would give
            mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode)
        except OSError:
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk, a quota, a read-only folder: one line, the old file intact
            why = os.strerror(e.errno) if e.errno else str(e)
            raise FewLabelsError(f"could not write {path}: {why} (it needs {len(data) / 2**20:.1f} MB); "
                                 f"{'the old file is intact' if path.exists() else 'nothing was written'}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """obj with NaN and ±inf floats as None: JSON has no such numbers (a diverged loss must not make a file that
    strict readers reject)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


COMMAND_LINE: list[str] = []  # the arguments of the `fewlabels` command line running in this process (cli.main)


def environment_info() -> dict[str, Any]:
    """What a result depends on: versions, machine, commit, date, and the command line that ran (from the CLI)."""
    import shlex

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": bool(_malloc_tuned),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # processes of this run (torchrun), 1 in a plain run
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    if COMMAND_LINE:
        info["command"] = "fewlabels " + shlex.join(COMMAND_LINE)
    return info

"""The image set every method works on, and how rows of large sets are gathered without filling the memory."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FewLabelsError

# gathers (subsets, concatenations) larger than this go to a memory-mapped scratch file, written in chunks: a pool
# larger than RAM is then paged in batch by batch, and a copy of a large split costs disk, not memory
IN_MEMORY_MB = float(os.environ.get("FEWLABELS_IN_MEMORY_MB", "64"))
_CHUNK_BYTES = 32 << 20


def scratch_dir() -> Path:
    """Where scratch files go: $FEWLABELS_CACHE/scratch, else ~/.cache/fewlabels/cache/scratch (the user's own)."""
    base = os.environ.get("FEWLABELS_CACHE") or Path.home() / ".cache" / "fewlabels" / "cache"
    return Path(base).expanduser() / "scratch"


def check_memory(shape: tuple[int, ...], what: str) -> None:
    """One clear error, instead of an allocation failure or the kernel's OOM killer, when a uint8 array of `shape`
    would not fit in the memory available now (Linux: MemAvailable)."""
    need = math.prod(shape)
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    if need > 0.8 * avail:
        n, *rest = shape
        raise FewLabelsError(f"{what}: {n:,} images of {'x'.join(map(str, rest))} need {need / 2**30:.1f} GB of memory "
                             f"and {avail / 2**30:.1f} GB is available: use a smaller --image-size, or free the cache "
                             f"folder's disk so that they can be memory-mapped ({scratch_dir().parent})")


def scratch(shape: tuple[int, ...], folder: Path | None = None) -> torch.Tensor | None:
    """A writable uint8 tensor of `shape` backed by a memory-mapped file in `folder` (default scratch_dir()), unlinked
    at once (the file goes with the last reference to the tensor); None when no file can be made there."""
    try:
        folder = scratch_dir() if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        import shutil
        if shutil.disk_usage(folder).free < math.prod(shape) + (256 << 20):  # a full disk under a mapping: SIGBUS
            return None
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".rows.", suffix=".u8")  # 0600, this user's
        os.close(fd)
        try:
            arr = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape) if math.prod(shape) else None
        finally:
            os.unlink(tmp)
    except OSError:
        return None
    return torch.from_numpy(arr) if arr is not None else torch.empty(shape, dtype=torch.uint8)


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (file-backed clean pages are dropped, re-read on use)


def release(images: torch.Tensor) -> None:
    """Let the kernel take back the memory of rows already used (e.g. a pool's chunk once labelled): for rows
    memory-mapped from a file this drops them from the process's resident memory, so streaming a pool larger than
    RAM keeps the resident set at a chunk; for rows in ordinary memory it is a no-op (MADV_PAGEOUT never discards
    data: anonymous pages could only go to swap). Best effort, Linux only."""
    if not sys.platform.startswith("linux") or images.device.type != "cpu" or images.numel() == 0:
        return
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    start = images.data_ptr()
    end = start + images.numel() * images.element_size()
    lo, hi = -(-start // page) * page, end // page * page  # whole pages inside the rows only
    if hi > lo:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), ctypes.c_int(_MADV_PAGEOUT))


def gather(parts: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """The rows of each part (a tensor (n, ...) and the rows to take of it, None for all), concatenated: in memory
    when small, else written chunk by chunk into a memory-mapped scratch file (never the whole in RAM at once)."""
    sizes = [p.shape[0] if rows is None else len(rows) for p, rows in parts]
    shape = (sum(sizes), *parts[0][0].shape[1:])
    nbytes = math.prod(shape) * parts[0][0].element_size()
    if parts[0][0].dtype != torch.uint8 or nbytes <= IN_MEMORY_MB * 2**20 or parts[0][0].device.type != "cpu":
        return torch.cat([p if rows is None else p[rows] for p, rows in parts])
    out = scratch(shape)
    if out is None:
        check_memory(shape, "the images")
        return torch.cat([p if rows is None else p[rows] for p, rows in parts])
    step = max(1, _CHUNK_BYTES // max(1, math.prod(shape[1:])))
    at = 0
    for p, rows in parts:
        n = p.shape[0] if rows is None else len(rows)
        for i in range(0, n, step):
            j = min(n, i + step)
            out[at + i:at + j] = p[i:j] if rows is None else p[rows[i:j]]
        at += n
    return out


@dataclass
class ImageSet:
    """A whole split as one uint8 tensor (in memory, or memory-mapped from the decode cache or a scratch file).

    images: uint8 (N, C, H, W), C is 1 or 3.
    labels: int64 (N,), -1 where the label is unknown (unlabelled images).
    classes: class names; labels index into it.
    paths: source file of each image, when it came from files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet.labels must have shape ({self.images.shape[0]},), got "
                             f"{tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, idx: torch.Tensor | list[int]) -> ImageSet:
        """The images at idx (a large subset goes to a memory-mapped scratch file: see gather)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageSet(gather([(self.images, idx)]), self.labels[idx], list(self.classes), paths)

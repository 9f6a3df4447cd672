"""Fused per-image CPU kernels for the augmentation presets, compiled from ``_native.c`` when fewlabels is installed.

The batched PyTorch path streams the whole batch through memory once per step (crop, each RandAugment layer,
Cutout, normalise). At 224 px that memory traffic, not Python, is the cost. The native path instead takes each
image through every step while it sits in the CPU cache, with the random choices drawn by the same Python code,
so both paths give the same images (except for rare float-rounding ties, see tests/test_augment_native.py).

The C source is built by ``pip install`` (setup.py: a shared library ``_fl_augment*.so`` next to this file, tuned
with ``-march=native`` when the compiler takes it). At run time fewlabels only loads that file from its own package
folder: nothing is compiled, and nothing is loaded from a cache or temp folder that another user could write.
Without the library (no C compiler at install time) fewlabels says so once and uses the PyTorch path;
``FEWLABELS_NATIVE_AUGMENT=0`` turns the native path off. The batch is split across ``torch.get_num_threads()``
threads (the C code releases the GIL).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_I64, _F64, _U8, _F32 = (ctypes.POINTER(t) for t in (ctypes.c_int64, ctypes.c_double, ctypes.c_uint8, ctypes.c_float))

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_why: str | None = None
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """A forked child (e.g. a DataLoader worker) inherits the pool object but not its threads, and possibly a lock
    held by a thread that does not exist there: start afresh."""
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def enabled() -> bool:
    return os.environ.get("FEWLABELS_NATIVE_AUGMENT", "1").lower() not in ("0", "false", "no", "off")


def library_path() -> Path | None:
    """The kernels built at install time: ``_fl_augment<extension suffix>`` in this package's folder, or None."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_fl_augment{suffix}"
        if p.is_file():
            return p
    return None


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (disabled, or not built: the reason is in `unavailable_reason()`)."""
    global _lib, _tried, _why
    if not enabled():
        return None
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            path = library_path()
            if path is None:
                raise OSError("they were not built when fewlabels was installed (no C compiler then?)")
            lib = ctypes.CDLL(str(path))
            fn = lib.fl_augment
            fn.restype = ctypes.c_int
            fn.argtypes = [_U8, *[ctypes.c_int64] * 6, ctypes.c_int64, ctypes.c_int32, _I64, _U8, ctypes.c_int64,
                           _I64, _F64, _F64, _U8, ctypes.c_int64, _I64, ctypes.c_int32, _U8, _U8, _F32, _I64, _F32]
            _lib = lib
        except (OSError, AttributeError) as e:
            _why = str(e)
            warnings.warn(f"fewlabels: the fast native augmentation kernels are unavailable ({_why}); using the "
                          f"PyTorch path, which is slower at large image sizes. Reinstall fewlabels with a C compiler "
                          f"present (pip install -e .) to build them, or set FEWLABELS_NATIVE_AUGMENT=0 to silence "
                          f"this.", RuntimeWarning, stacklevel=3)
        _tried = True
        return _lib


def unavailable_reason() -> str | None:
    return _why


_HUGE = 1 << 21  # a transparent huge page on x86-64 and arm64 Linux
_MADV_HUGEPAGE = 14
_libc = None


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.empty on the CPU, asking Linux to back it with 2 MB transparent huge pages when it is big.

    A fresh batch tensor is page-faulted 4 kB at a time on first write: for a 64 × 3 × 224 × 224 float batch that
    is ~9,000 faults, measured at ~0.3 of the ~0.67 ms per image that the fused kernels take at 224 px on a 2-core
    VM; with huge pages it is ~20 faults (~0.16 ms per image saved there). Harmless where THP is off or
    unsupported (the advice is ignored)."""
    global _libc
    t = torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if sys.platform != "linux" or nbytes < 2 * _HUGE:
        return t
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (t.data_ptr() + nbytes) & ~(_HUGE - 1)
        if end > start:
            _libc.madvise(start, end - start, _MADV_HUGEPAGE)
    except (OSError, AttributeError):
        pass
    return t


def can_write(out: torch.Tensor) -> bool:
    """Whether the kernels can write into out: CPU memory, strided, no two elements at one address."""
    if out.device.type != "cpu" or out.layout != torch.strided:
        return False
    overlap = getattr(torch, "_debug_has_internal_overlap", None)  # 0: none, 1: yes, 2: cannot tell
    if overlap is not None:
        return overlap(out) == 0
    return out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < threads:
            old, _pool = _pool, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fewlabels-augment")
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _ptr(t: torch.Tensor | None, kind):
    return ctypes.cast(t.data_ptr(), kind) if t is not None else ctypes.cast(None, kind)


def run(x: torch.Tensor, *, padding: int, reflect: bool, offsets: torch.Tensor | None, flips: torch.Tensor | None,
        ops: torch.Tensor | None, magnitudes: torch.Tensor | None, signs: torch.Tensor | None, fill: torch.Tensor,
        cutout: int, centres: torch.Tensor | None, cutout_mean: bool, cutout_fill: torch.Tensor,
        out: torch.Tensor, scale_shift: torch.Tensor | None = None) -> torch.Tensor:
    """Augment x (N, C, H, W) uint8 CPU into out: uint8 (N, C, H, W), or float32 of any strides, normalised as
    x · scale + shift with scale_shift (2, C) float32. All parameters are CPU tensors in batch order (see
    _native.c)."""
    lib = library()
    assert lib is not None, "native kernels unavailable"
    n, c, h, w = x.shape
    if x.dtype != torch.uint8 or x.device.type != "cpu" or c not in (1, 3):
        raise ValueError(f"the native kernels take CPU uint8 (N, 1 or 3, H, W) batches, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    x = x.contiguous()
    if not can_write(out):
        raise ValueError("the native kernels write into a CPU tensor whose elements do not overlap")
    if h * w >= 2**31:
        raise ValueError(f"images of {h}x{w} pixels are too large for the native kernels")
    # the C code trusts its indices and arguments: keep every read inside the image and every conversion in range
    if offsets is not None:
        offsets = offsets.clamp(0, 2 * padding)
    if ops is not None:
        ops = ops.clamp(0, 13)
    if magnitudes is not None:
        magnitudes = magnitudes.to(torch.float64).nan_to_num(0.0).clamp(0.0, 10.0)
    if signs is not None:
        signs = torch.where(signs.to(torch.float64) < 0, -1.0, 1.0)

    def i64(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.int64).contiguous()

    offsets, centres = i64(offsets), i64(centres)
    flips = None if flips is None else flips.to(torch.uint8).contiguous()
    layers = 0 if ops is None else ops.shape[0]
    ops = i64(ops) if ops is not None else torch.zeros(0, dtype=torch.int64)
    mags = (magnitudes if magnitudes is not None else torch.zeros(0)).to(torch.float64).contiguous()
    signs = (signs if signs is not None else torch.zeros(0)).to(torch.float64).contiguous()
    fill, cutout_fill = fill.to(torch.uint8).contiguous(), cutout_fill.to(torch.uint8).contiguous()
    is_u8 = out.dtype == torch.uint8
    if is_u8:
        out_u8, out_f, strides, lut = out, None, None, None
        if not out.is_contiguous():
            raise ValueError("a uint8 output must be contiguous")
    else:
        if out.dtype != torch.float32 or scale_shift is None:
            raise ValueError("float output must be float32, with scale_shift")
        out_u8, out_f, lut = None, out, scale_shift.to(torch.float32).contiguous()
        strides = torch.tensor(out.stride(), dtype=torch.int64)

    def work(a: int, b: int) -> int:
        return lib.fl_augment(_ptr(x, _U8), n, c, h, w, a, b, padding, int(reflect), _ptr(offsets, _I64),
                              _ptr(flips, _U8), layers, _ptr(ops, _I64), _ptr(mags, _F64), _ptr(signs, _F64),
                              _ptr(fill, _U8), cutout, _ptr(centres, _I64), int(cutout_mean), _ptr(cutout_fill, _U8),
                              _ptr(out_u8, _U8), _ptr(out_f, _F32), _ptr(strides, _I64), _ptr(lut, _F32))

    threads = max(1, min(torch.get_num_threads(), n // 4))
    if threads == 1:
        codes = [work(0, n)]
    else:
        pool = _thread_pool(threads)
        bounds = [n * k // threads for k in range(threads + 1)]
        codes = list(pool.map(lambda k: work(bounds[k], bounds[k + 1]), range(threads)))
    if any(codes):
        raise MemoryError("the native augmentation kernels could not allocate their scratch memory")
    return out

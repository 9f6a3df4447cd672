"""No code from a folder another user can write (issue 28, item 1): the C kernels are built when fewlabels is
installed and loaded only from its own package folder; a library planted where the old run-time build cached its
output (~/.cache/fewlabels/native, $FEWLABELS_CACHE/native, $TMPDIR/fewlabels-native-<uid>) is never loaded."""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

from fewlabels.augment import native


def test_a_planted_library_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    planted = []
    tmp = Path(tempfile.gettempdir())
    for folder in (tmp_path / "home" / ".cache" / "fewlabels" / "native", tmp_path / "cache" / "native",
                   tmp_path / "tmp" / f"fewlabels-native-{uid}", tmp / f"fewlabels-native-{uid}"):
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("fl_augment-0123456789abcdef.so", "_fl_augment.so"):
            (folder / name).write_bytes(b"\x7fELF planted")
            planted.append(folder / name)
    loaded = []
    real = ctypes.CDLL

    def recording(name, *a, **k):
        loaded.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(ctypes, "CDLL", recording)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    native.library()
    package = Path(native.__file__).resolve().parent
    assert all(Path(p).resolve().parent == package for p in loaded if p is not None), loaded
    assert all(p.read_bytes() == b"\x7fELF planted" for p in planted)  # nothing compiled over them either
    path = native.library_path()
    assert path is None or path.parent == package


def test_nothing_is_compiled_at_run_time():
    """The run-time build (compiler lookup, cache folders) is gone: only the install builds the kernels."""
    for gone in ("build", "cache_dir", "_cache_dirs", "_writable_cache_dir", "_compiler"):
        assert not hasattr(native, gone), gone

"""The fused C kernels (fewlabels/augment/_native.c) against the batched PyTorch path they replace on CPU.

Both paths draw the same random choices, so for the same seed they must give the same images. Tolerance: the C
code repeats the PyTorch steps in float32, so values agree except at float-rounding ties (an fmadd in PyTorch's
vectorised kernels, a float mean summed in another order); we allow ≤ 0.1 % of values to differ, colour ops by
≤ 1 level (geometric ops: a tie picks the neighbouring pixel, so any difference, still on ≤ 0.1 % of pixels).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fewlabels.augment import OPS, RandAugment, build_augment, native
from fewlabels.augment.presets import Augment
from fewlabels.errors import FewLabelsError

pytestmark = pytest.mark.skipif(native.library() is None,
                                reason=f"native kernels unavailable: {native.unavailable_reason()}")

GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _images(n=12, c=3, h=29, w=37, seed=0):
    """uint8 (n, c, h, w): gradients + noise, per-image brightness (non-square, odd sides)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = torch.stack([xx * 6.0, yy * 7.0, (xx + yy) * 3.0])[:c] % 256
    scale = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.2
    return (base * scale + torch.randn(n, c, h, w, generator=g) * 25).clamp(0, 255).to(torch.uint8)


def _both(aug: Augment, x: torch.Tensor, seed: int = 5, **kw):
    out = []
    for use in (True, False):
        aug.use_native = use
        assert aug.uses_native(x) is use
        out.append(aug(x, generator=torch.Generator().manual_seed(seed), **kw))
    return out


def _close(a: torch.Tensor, b: torch.Tensor, any_size: bool = False) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    d = (a.int() - b.int()).abs()
    frac = (d > 0).float().mean().item()
    assert frac <= 1e-3, f"{frac:.2%} of values differ"
    if not any_size:
        assert d.max().item() <= 1


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c", [3, 1])
def test_each_op_matches_the_pytorch_path(op, c):
    """Every RandAugment op at magnitudes 0..10 with both signs, per image, RGB and grey, non-square images, with
    a per-channel fill for the geometric ops."""
    x = _images(c=c)
    fill = [10, 200, 77][:c]
    for m in (0.0, 3.0, 9.0, 10.0):
        aug = Augment("x", randaugment=RandAugment(1, m, magnitude_std=0.5, ops=[op], fill=fill))
        a, b = _both(aug, x)
        _close(a, b, any_size=op in GEOMETRIC)


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
@pytest.mark.parametrize("size", [32, 45])
def test_presets_match_the_pytorch_path(pad_mode, size):
    """weak and strong, random and alternating flips, pad-crop in both modes, Cutout with a fill and with the
    image mean, uint8 output and normalised float32 (contiguous and channels_last)."""
    x = _images(n=20, h=size, w=size)
    for preset in ("none", "weak", "strong"):
        for kw in (dict(), dict(alternating_flip=True, cutout_fill="mean"), dict(cutout=7, cutout_fill=[1, 2, 3])):
            aug = build_augment(preset, image_size=size, pad_mode=pad_mode, **kw)
            a, b = _both(aug, x, epoch=1, index=torch.arange(20) * 3)
            _close(a, b, any_size=True)
            outs = []
            for use in (True, False):
                aug.use_native = use
                o = torch.empty(x.shape).to(memory_format=torch.channels_last)
                outs.append(aug.normalized(x, MEAN, STD, generator=torch.Generator().manual_seed(5), epoch=1,
                                           index=torch.arange(20) * 3, out=o))
                assert outs[-1] is o
            diff = (outs[0] - outs[1]).abs()
            assert (diff > 1e-5).float().mean().item() <= 1e-3


def test_the_result_does_not_depend_on_threads():
    x = _images(n=32, h=40, w=40)
    aug = build_augment("strong", image_size=40)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(aug(x, generator=torch.Generator().manual_seed(1)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_bad_settings_are_clear_errors():
    x = _images(n=4, h=8, w=8)
    for inp in (x, x.float()):  # the message names the flag and a value that works, on either path
        with pytest.raises(FewLabelsError, match=r"--padding 8 \(reflect\).*use --padding 7 or less"):
            build_augment("weak", image_size=8, padding=8)(inp)
    with pytest.raises(FewLabelsError, match="cutout fill"):
        build_augment("strong", image_size=8, cutout_fill="median")(x)


def test_without_the_built_library_it_warns_once_and_uses_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(native, "library_path", lambda: None)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    x = _images(n=4)
    aug = build_augment("strong", image_size=29)
    with pytest.warns(RuntimeWarning, match="not built when fewlabels was installed.*FEWLABELS_NATIVE_AUGMENT=0"):
        assert not aug.uses_native(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        out = aug(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FEWLABELS_NATIVE_AUGMENT", "0")
    assert not build_augment("weak", image_size=29).uses_native(_images(n=2))


def test_works_in_a_forked_worker():
    """A DataLoader worker is a fork of a process whose thread pool is already running: the child must not wait
    on the parent's threads."""
    import multiprocessing as mp

    x = _images(n=16, h=40, w=40)
    aug = build_augment("strong", image_size=40)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = aug(x, generator=torch.Generator().manual_seed(2))  # starts the pool
        with mp.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_augment_in_child, (x,)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(parent, child)


def _augment_in_child(x):
    torch.set_num_threads(2)
    return build_augment("strong", image_size=40)(x, generator=torch.Generator().manual_seed(2))


def test_zero_padding_wider_than_the_image():
    """Zero padding may exceed the image (a crop can be all padding): no read or write outside the image."""
    x = _images(n=16, h=6, w=5)
    a, b = _both(build_augment("weak", image_size=6, padding=9, pad_mode="zeros"), x)
    assert torch.equal(a, b)


def test_unusable_outputs_and_out_of_range_fills():
    """An output the kernels cannot write (overlapping elements, not in CPU memory) goes to the PyTorch path, which
    reports it; a fill outside 0..255 is an error that names it, not a silently wrapped value."""
    x = _images(n=4, h=16, w=16)
    aug = build_augment("weak", image_size=16)
    with pytest.raises(RuntimeError):
        aug.normalized(x, MEAN, STD, out=torch.empty(1, 3, 16, 16).expand(4, 3, 16, 16))
    meta = aug.normalized(x, MEAN, STD, out=torch.empty(x.shape, device="meta"))  # no crash: PyTorch path
    assert meta.device.type == "meta"
    with pytest.raises(FewLabelsError, match="outside 0..255"):
        Augment("x", randaugment=RandAugment(1, 9, ops=["ShearX"], fill=300))(x)

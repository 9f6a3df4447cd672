"""Tests for fewlabels.augment: each RandAugment op against torchvision, invariants of the batched ops, CutMix/MixUp
label bookkeeping, determinism and per-image randomness."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fewlabels.augment import (
    OPS,
    PRESETS,
    Mixer,
    RandAugment,
    alternating_flip_mask,
    apply_op,
    box_lam,
    box_mask,
    build_augment,
    cutmix,
    cutout,
    hflip,
    mixup,
    normalize,
    pad_crop,
    preview_grid,
    rand_bbox,
    random_cutout,
    smooth_targets,
)
from fewlabels.augment import functional as F
from fewlabels.errors import FewLabelsError

H, W = 32, 40  # not square, so a swapped height/width shows up


def _images(n: int = 8, c: int = 3, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    """uint8 (n, c, h, w): smooth gradients plus noise, so both colour statistics and pixel positions matter."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = torch.stack([xx * 6.0, yy * 7.0, (xx + yy) * 3.0])[:c] % 256  # (c, h, w)
    scale = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.2  # per-image brightness, so per-image stats differ
    noise = torch.randn(n, c, h, w, generator=g) * 25
    return (base * scale + noise).clamp(0, 255).to(torch.uint8)


# --- per-op comparison with torchvision -----------------------------------------------------------------------
#
# Our op at magnitude m and sign s should equal torchvision's functional op called with the argument that the
# documented mapping gives (rotate 3m·s degrees, shear 0.03m·s, enhance 1 + 0.09m·s, posterize round(8 − 0.4m)
# bits, solarize threshold 256 − 25.6m, translate round(0.045m·size)·s pixels), one image at a time.
#
# Tolerances (stated per op, checked on 8 images × 3 channels × 32 × 40 with magnitudes spread over (0, 10]):
# * colour and LUT ops compute in float32 and truncate like torchvision, so they should agree bit for bit; we
#   allow ≤ 0.1 % of values to differ, by ≤ 1 level (float rounding at exact .0 boundaries), and a mean absolute
#   difference ≤ 0.01 levels.
# * geometric ops sample with nearest neighbour; translations/shears move rows by whole pixels and rotation uses
#   the same rounding as grid_sample, so they agree except where a coordinate lands within float error of a pixel
#   boundary (.5): we allow ≤ 0.5 % of pixels to differ (and any difference there may be large).
# The "wrong parameter" test below checks that a sign error or a wrong factor exceeds these tolerances by far.

MAGS = torch.tensor([0.7, 2.3, 3.1, 5.5, 6.9, 8.2, 9.0, 10.0], dtype=torch.float64)
SIGNS = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def _tv_reference(name: str, img: torch.Tensor, m: float, s: float) -> torch.Tensor:
    """torchvision's op on one (C, H, W) image, with the argument our documented mapping gives."""
    h, w = img.shape[-2:]
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Equalize":
        return TF.equalize(img)
    if name == "Rotate":
        return TF.rotate(img, 3.0 * m * s, interpolation=TF.InterpolationMode.NEAREST)
    if name == "Solarize":
        thr = 256.0 - 25.6 * m
        return TF.solarize(img, thr if img.dtype == torch.uint8 else thr / 255.0)
    if name == "Posterize":
        return TF.posterize(img, round(8 - 0.4 * m))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        fn = {"Color": TF.adjust_saturation, "Contrast": TF.adjust_contrast, "Brightness": TF.adjust_brightness,
              "Sharpness": TF.adjust_sharpness}[name]
        return fn(img, 1.0 + 0.09 * m * s)
    if name in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(0.03 * m * s))
        shear = [deg, 0.0] if name == "ShearX" else [0.0, deg]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0],
                         interpolation=TF.InterpolationMode.NEAREST)
    px = round(0.045 * m * (w if name == "TranslateX" else h)) * int(s)
    t = [px, 0] if name == "TranslateX" else [0, px]
    return TF.affine(img, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0],
                     interpolation=TF.InterpolationMode.NEAREST)


def _reference(name: str, x: torch.Tensor, mags: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    return torch.stack([_tv_reference(name, x[i], float(mags[i]), float(signs[i])) for i in range(x.shape[0])])


def _within_tolerance(name: str, ours: torch.Tensor, ref: torch.Tensor) -> tuple[bool, str]:
    diff = (ours.int() - ref.int()).abs()
    frac = (diff > 0).float().mean().item()
    if name in GEOMETRIC:
        ok = frac <= 0.005
    else:
        ok = frac <= 0.001 and diff.max().item() <= 1 and diff.float().mean().item() <= 0.01
    return ok, f"{name}: {frac:.4%} of values differ, max {diff.max().item()}, mean {diff.float().mean().item():.4f}"


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("channels", [3, 1])
def test_op_matches_torchvision_uint8(name: str, channels: int) -> None:
    x = _images(c=channels)
    ours = apply_op(x, name, MAGS, SIGNS)
    assert ours.dtype == torch.uint8 and ours.shape == x.shape
    ok, msg = _within_tolerance(name, ours, _reference(name, x, MAGS, SIGNS))
    assert ok, msg


@pytest.mark.parametrize("name", [o for o in OPS if o not in GEOMETRIC])
def test_colour_op_matches_torchvision_float(name: str) -> None:
    x = _images().float() / 255.0
    ours = apply_op(x, name, MAGS, SIGNS)
    ref = _reference(name, x, MAGS, SIGNS)
    assert ours.dtype == torch.float32
    if name == "Posterize":  # keeping 8 bits is our identity; torchvision's float posterize(8) quantises to 1/256
        eight = (8 - 0.4 * MAGS).round() == 8
        assert eight.any() and torch.equal(ours[eight], x[eight])
        ours, ref = ours[~eight], ref[~eight]
    # float path: no truncation, so the only differences are float32 rounding (Equalize quantises to 8 bits
    # exactly as torchvision does)
    assert (ours - ref).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize(
    "name, wrong",
    [
        ("Rotate", lambda m, s: (m, -s)),  # wrong direction
        ("ShearX", lambda m, s: (m, -s)),
        ("ShearY", lambda m, s: (m, -s)),
        ("TranslateX", lambda m, s: (m, -s)),
        ("TranslateY", lambda m, s: (m, -s)),
        ("Brightness", lambda m, s: (m, -s)),
        ("Color", lambda m, s: (m, -s)),
        ("Contrast", lambda m, s: (m, -s)),
        ("Sharpness", lambda m, s: (m, -s)),
        ("Solarize", lambda m, s: (m * 0.8, s)),  # 20 % off in magnitude
        ("Posterize", lambda m, s: (m * 0.6, s)),
    ],
)
def test_tolerance_detects_wrong_parameters(name: str, wrong) -> None:
    """The comparison above can fail: a sign error (or a wrong magnitude) is far outside the tolerance."""
    x = _images()
    m, s = wrong(MAGS, SIGNS)
    ok, msg = _within_tolerance(name, apply_op(x, name, m, s), _reference(name, x, MAGS, SIGNS))
    assert not ok, msg


def test_magnitude_zero_is_identity_for_every_op() -> None:
    for x in (_images(), _images(c=1), _images().float() / 255.0):
        for name in OPS:
            for sign in (1.0, -1.0):
                out = apply_op(x, name, 0.0, sign)
                assert out.dtype == x.dtype and torch.equal(out, x), name
    ra = RandAugment(num_ops=3, magnitude=0)
    x = _images()
    assert torch.equal(ra(x, torch.Generator().manual_seed(0)), x)


def test_magnitude_only_zero_images_pass_through_magnitude_free_ops() -> None:
    x = _images()
    mags = torch.tensor([0.0, 5.0] * 4, dtype=torch.float64)
    for name in ("AutoContrast", "Equalize"):
        out = apply_op(x, name, mags)
        assert torch.equal(out[0::2], x[0::2])
        assert torch.equal(out[1::2], _reference(name, x[1::2], mags[1::2], SIGNS[1::2]))


def test_fill_value_per_channel_matches_torchvision() -> None:
    x = _images()
    ang = torch.tensor([-30.0, -12.0, -4.0, 0.0, 5.0, 11.0, 20.0, 30.0])
    ours = F.rotate(x, ang, fill=[10, 20, 30])
    ref = torch.stack([TF.rotate(x[i], float(ang[i]), fill=[10, 20, 30]) for i in range(8)])
    assert ((ours != ref).float().mean() <= 0.005).item()
    t = torch.tensor([-50, -17, -3, 0, 2, 9, 25, 60])
    ours = F.translate_x(x, t, fill=[10, 20, 30])
    ref = torch.stack([TF.affine(x[i], angle=0.0, translate=[int(t[i]), 0], scale=1.0, shear=[0.0, 0.0],
                                 fill=[10, 20, 30]) for i in range(8)])
    assert torch.equal(ours, ref)


# --- RandAugment ----------------------------------------------------------------------------------------------


def test_randaugment_same_seed_same_output_and_dtype_range() -> None:
    ra = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5)
    x = _images(16)
    a = ra(x, torch.Generator().manual_seed(3))
    b = ra(x, torch.Generator().manual_seed(3))
    c = ra(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    xf = x.float() / 255
    out = ra(xf, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, _images(16))  # input untouched


def test_randaugment_matches_sequential_ops() -> None:
    """The grouped batch implementation equals applying each image's drawn ops one by one."""
    ra = RandAugment(num_ops=2, magnitude=7, magnitude_std=1.0, prob=0.8)
    x = _images(24)
    params = ra.sample(24, torch.Generator().manual_seed(5))
    out = ra.apply(x, params)
    for i in range(24):
        ref = x[i : i + 1]
        for layer in range(2):
            ref = apply_op(ref, OPS[int(params.op[layer, i])], params.magnitude[layer, i : i + 1],
                           params.sign[layer, i : i + 1])
        assert torch.equal(out[i : i + 1], ref), i


def test_randaugment_param_distribution() -> None:
    ra = RandAugment(num_ops=2, magnitude=9, magnitude_std=0.5, prob=0.5)
    p = ra.sample(20000, torch.Generator().manual_seed(0))
    counts = torch.bincount(p.op.flatten(), minlength=len(OPS)).double()
    # half the layers are skipped (→ Identity): Identity gets 0.5 + 0.5/14, each other op 0.5/14
    assert abs(counts[0] / counts.sum() - (0.5 + 0.5 / 14)) < 0.01
    assert ((counts[1:] / counts.sum() - 0.5 / 14).abs() < 0.006).all()
    assert p.magnitude.min() >= 0 and p.magnitude.max() <= 10
    assert abs(p.magnitude.mean().item() - 9.0) < 0.1 and 0.3 < p.magnitude.std().item() < 0.6
    assert set(p.sign.unique().tolist()) == {-1.0, 1.0}


def test_randaugment_per_image_randomness() -> None:
    x = _images(1).expand(64, -1, -1, -1).contiguous()
    out = RandAugment(2, 9)(x, torch.Generator().manual_seed(0))
    distinct = torch.unique(out.flatten(1), dim=0).shape[0]
    assert distinct >= 40, distinct  # 14² op pairs × signs: almost all 64 differ (identity pairs may repeat)


def test_unknown_names_raise_fewlabels_error() -> None:
    with pytest.raises(FewLabelsError, match="none, weak, strong"):
        build_augment("medium", image_size=32)
    with pytest.raises(FewLabelsError, match="Rotate"):
        apply_op(_images(), "Rotation", 5.0)
    with pytest.raises(FewLabelsError, match="Identity"):
        RandAugment(ops=["Bogus"])


# --- flips, pad-crop, cutout ----------------------------------------------------------------------------------


def test_pad_crop_matches_padded_slices() -> None:
    x = _images(6)
    off = torch.tensor([[0, 0], [4, 4], [8, 8], [1, 7], [7, 2], [3, 0]])
    for mode, pad_mode in (("reflect", "reflect"), ("zeros", "constant")):
        out = pad_crop(x, 4, off, mode)
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode=pad_mode)
        ref = torch.stack([padded[i, :, off[i, 0] : off[i, 0] + H, off[i, 1] : off[i, 1] + W] for i in range(6)])
        assert torch.equal(out, ref), mode
    assert torch.equal(out[1], x[1])  # offset (p, p) is the identity
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(pad_crop(x, 4, off, "zeros", order=order), out[order])
    flip = torch.tensor([True, False, True, True, False, True])
    out = pad_crop(x, 4, off, "reflect", flip=flip)
    src = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = torch.nn.functional.pad(src, (4, 4, 4, 4), mode="reflect")
    ref = torch.stack([padded[i, :, off[i, 0] : off[i, 0] + H, off[i, 1] : off[i, 1] + W] for i in range(6)])
    assert torch.equal(out, ref)


def test_hflip_and_alternating_flip() -> None:
    x = _images(5)
    mask = torch.tensor([True, False, True, False, False])
    out = hflip(x, mask)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    idx = torch.arange(10000)
    even, odd = alternating_flip_mask(idx, 0), alternating_flip_mask(idx, 1)
    assert torch.equal(even, ~odd)  # every image flipped in exactly one of two consecutive epochs
    assert torch.equal(even, alternating_flip_mask(idx, 2))  # fixed half
    assert abs(even.float().mean().item() - 0.5) < 0.02
    assert not torch.equal(even, alternating_flip_mask(idx, 0, seed=1))


def test_cutout_is_clipped_at_the_border() -> None:
    x = torch.full((3, 1, 10, 12), 200, dtype=torch.uint8)
    out = cutout(x, torch.tensor([[0, 0], [5, 6], [9, 11]]), size=4, fill=0)
    zeros = (out == 0).flatten(1).sum(1).tolist()
    # box rows/cols [c - 2, c + 2): at (0, 0) only 2×2 is inside, at (9, 11) 3×3, in the middle all 4×4
    assert zeros == [4, 16, 9]
    assert torch.equal(out[1, 0, 3:7, 4:8], torch.zeros(4, 4, dtype=torch.uint8))
    mean_fill = cutout(x.float() / 255, torch.tensor([[5, 6]] * 3), size=4, fill="mean")
    assert torch.allclose(mean_fill, x.float() / 255)  # constant image: its mean is itself


# --- presets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n", [1, 7, 64])
def test_presets_dtype_shape_determinism(preset: str, n: int) -> None:
    aug = build_augment(preset, image_size=32)
    x = _images(n, h=32, w=32)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    if preset == "none":
        assert torch.equal(a, x)


def test_strong_preset_per_image_randomness() -> None:
    x = _images(1, h=32, w=32).expand(64, -1, -1, -1).contiguous()
    out = build_augment("strong", image_size=32)(x, torch.Generator().manual_seed(1))
    assert torch.unique(out.flatten(1), dim=0).shape[0] >= 60
    weak = build_augment("weak", image_size=32)(x, torch.Generator().manual_seed(1))
    assert torch.unique(weak.flatten(1), dim=0).shape[0] >= 40  # 81 offsets × 2 flips


def test_strong_pipeline_equals_the_ops_applied_one_after_another() -> None:
    """The fused pipeline (grouped gathers, workspace) gives exactly what the standalone ops give."""
    aug = build_augment("strong", image_size=32, cutout_fill="mean")
    for n in (64, 5, 64):  # a smaller batch in between: stale workspace contents must not leak
        x = _images(n, h=32, w=32, seed=n)
        g = torch.Generator().manual_seed(7)
        # the pipeline's draw order: offsets, flips, RandAugment params, cutout centres
        offsets = torch.randint(9, (n, 2), generator=g)
        flips = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
        params = aug.randaugment.sample(n, g)
        centres = torch.stack([torch.randint(32, (n,), generator=g), torch.randint(32, (n,), generator=g)], 1)
        ref = pad_crop(x, 4, offsets, "reflect", flip=flips)
        ref = cutout(aug.randaugment.apply(ref, params), centres, 16, "mean")
        assert torch.equal(aug(x, torch.Generator().manual_seed(7)), ref), n
        normed = aug.normalized(x, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), torch.Generator().manual_seed(7))
        assert torch.equal(normed, normalize(ref, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))


def test_preset_options() -> None:
    aug = build_augment("strong", image_size=32, padding=2, cutout=0, hflip=False, ra_num_ops=1, ra_magnitude=5)
    assert aug.padding == 2 and aug.cutout == 0 and not aug.hflip
    assert aug.randaugment.num_ops == 1 and aug.randaugment.magnitude == 5
    weak = build_augment("weak", image_size=224)
    assert weak.padding == 28 and weak.hflip and weak.randaugment is None and weak.cutout == 0
    assert build_augment("weak", image_size=32, cutout=8).cutout == 8
    # without flips and with padding 0 the weak preset is the identity
    x = _images(4, h=32, w=32)
    assert torch.equal(build_augment("weak", image_size=32, padding=0, hflip=False)(x), x)
    # alternating flip follows the dataset index and the epoch
    alt = build_augment("weak", image_size=32, padding=0, alternating_flip=True)
    idx = torch.tensor([3, 10, 11, 400])
    e0, e1 = alt(x, epoch=0, index=idx), alt(x, epoch=1, index=idx)
    flipped0 = torch.tensor([torch.equal(e0[i], x[i].flip(-1)) for i in range(4)])
    flipped1 = torch.tensor([torch.equal(e1[i], x[i].flip(-1)) for i in range(4)])
    assert torch.equal(flipped0, ~flipped1)


def test_normalize() -> None:
    x = _images(4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ref = TF.normalize(x.float() / 255, mean, std)
    assert torch.allclose(normalize(x, mean, std), ref, atol=1e-5)
    assert torch.allclose(normalize(x.float() / 255, mean, std), ref, atol=1e-5)
    assert normalize(x, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert torch.allclose(normalize(x, mean, std, dtype=torch.bfloat16).float(), ref, atol=0.05)
    buf = torch.empty(x.shape)
    assert normalize(x, mean, std, out=buf) is buf and torch.allclose(buf, ref, atol=1e-5)
    big = _images(2, h=600, w=600)  # more than one cache block per call
    assert torch.allclose(normalize(big, mean, std), TF.normalize(big.float() / 255, mean, std), atol=1e-5)


# --- CutMix / MixUp -------------------------------------------------------------------------------------------


def _labelled_constant_images(n: int, h: int = 16, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i + 1 with label i, so every output pixel says which image it came from."""
    x = (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()
    return x, torch.arange(n)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("n", [8, 7])
def test_cutmix_label_mass_equals_pasted_area(per_image: bool, n: int) -> None:
    x, y = _labelled_constant_images(n)
    mixer = Mixer(cutmix_alpha=1.0, per_image=per_image, num_classes=n)
    for seed in range(5):
        out, t = mixer(x, y, torch.Generator().manual_seed(seed))
        assert torch.allclose(t.sum(1), torch.ones(n))
        for i in range(n):
            partner = n - 1 - i
            from_partner = (out[i, 0] == partner + 1).float().mean().item()
            if partner == i:  # middle image of an odd batch mixes with itself
                assert t[i, i].item() == pytest.approx(1.0)
            else:
                assert t[i, partner].item() == pytest.approx(from_partner, abs=1e-6)
                assert t[i, i].item() == pytest.approx(1 - from_partner, abs=1e-6)
        if not per_image:  # one box for the whole batch: the same area everywhere (except a self-partner)
            pasted = torch.tensor([t[i, n - 1 - i] for i in range(n) if n - 1 - i != i])
            assert torch.allclose(pasted, pasted[0].expand_as(pasted))


@pytest.mark.parametrize("per_image", [False, True])
def test_mixup_targets_are_the_same_convex_combination(per_image: bool) -> None:
    n = 9
    x, y = _labelled_constant_images(n)
    out, t = Mixer(mixup_alpha=0.4, per_image=per_image, num_classes=n)(x, y, torch.Generator().manual_seed(0))
    for i in range(n):
        partner = n - 1 - i
        # pixel = λ(i+1) + (1-λ)(partner+1) ⇒ λ recoverable when partner ≠ i
        if partner != i:
            lam = (out[i, 0, 0, 0] - (partner + 1)) / (i - partner)
            assert torch.allclose(out[i], out[i, 0, 0, 0].expand_as(out[i]))
            assert t[i, i].item() == pytest.approx(lam.item(), abs=1e-5)
            assert t[i, partner].item() == pytest.approx(1 - lam.item(), abs=1e-5)
    lams = torch.tensor([t[i, i] for i in range(n) if n - 1 - i != i])
    assert (lams.unique().numel() > 1) == per_image


def test_switch_prob_and_prob() -> None:
    n = 64
    x, y = _labelled_constant_images(n)
    mixer = Mixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, prob=0.5, per_image=True, num_classes=n)
    out, t = mixer(x, y, torch.Generator().manual_seed(0))
    constant = (out.flatten(1) == out.flatten(1)[:, :1]).all(1)  # MixUp (or untouched) images stay constant
    untouched = torch.tensor([t[i, i].item() == 1.0 for i in range(n)])
    assert 0 < (~constant).sum() < n  # some CutMix
    assert 0 < untouched.sum() < n  # some not mixed at all
    assert 0 < (constant & ~untouched).sum()  # some MixUp
    off = Mixer(mixup_alpha=1.0, prob=0.0, num_classes=n)
    same, t0 = off(x, y)
    assert torch.equal(same, x) and torch.equal(t0, smooth_targets(y, n))


def test_mixer_label_smoothing_and_soft_targets() -> None:
    x, y = _labelled_constant_images(6)
    _, t = Mixer(label_smoothing=0.1, num_classes=6)(x, y)
    assert torch.allclose(t, smooth_targets(y, 6, 0.1))
    assert t.max().item() == pytest.approx(0.9 + 0.1 / 6)
    soft = torch.eye(6)
    assert torch.allclose(smooth_targets(soft, smoothing=0.1), t)
    with pytest.raises(FewLabelsError):
        smooth_targets(y)


def test_mixer_same_seed_same_output() -> None:
    x = _images(8, h=16, w=16).float()
    y = torch.arange(8)
    m = Mixer(mixup_alpha=0.8, cutmix_alpha=1.0, per_image=True, num_classes=8)
    a = m(x, y, torch.Generator().manual_seed(1))
    b = m(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rand_bbox_clipped_and_lambda_corrected() -> None:
    h, w = 24, 30
    lam = torch.full((2000,), 0.1, dtype=torch.float64)
    boxes = rand_bbox(h, w, lam, torch.Generator().manual_seed(0))
    y0, y1, x0, x1 = boxes.unbind(1)
    assert ((0 <= y0) & (y0 <= y1) & (y1 <= h) & (0 <= x0) & (x0 <= x1) & (x1 <= w)).all()
    area = (y1 - y0) * (x1 - x0)
    requested = int(h * math.sqrt(0.9)) // 2 * 2 * (int(w * math.sqrt(0.9)) // 2 * 2)
    assert (area < requested).float().mean() > 0.5  # most big boxes hit a border and are clipped
    mask = box_mask(boxes, h, w)
    assert torch.allclose(1 - mask.flatten(1).double().mean(1), box_lam(boxes, h, w))
    xb, yb = _labelled_constant_images(4, h, w)
    out, t = cutmix(xb, smooth_targets(yb, 4), boxes[:4])
    pasted = (out[:, 0] == torch.tensor([4.0, 3.0, 2.0, 1.0]).view(4, 1, 1)).flatten(1).float().mean(1)  # partner's
    assert torch.allclose(pasted, 1 - box_lam(boxes[:4], h, w).float())
    assert torch.allclose(t[:, [3, 2, 1, 0]].diagonal(), pasted)


def test_mixup_function_uint8_rounds_back() -> None:
    x = _images(5)
    out, _ = mixup(x, torch.eye(5), 0.5)
    assert out.dtype == torch.uint8
    ref = ((x.float() + x.flip(0).float()) / 2).round()
    assert (out.float() - ref).abs().max() <= 0


# --- misc -----------------------------------------------------------------------------------------------------


def test_random_cutout_seeded() -> None:
    x = _images(16)
    a = random_cutout(x, 8, generator=torch.Generator().manual_seed(0))
    b = random_cutout(x, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_preview_grid(tmp_path) -> None:
    from PIL import Image

    path = preview_grid(_images(3, h=32, w=32), build_augment("strong", image_size=32), views=4,
                        path=tmp_path / "grid.png")
    img = Image.open(path)
    assert img.size == (5 * 96 + 4 * 2, 3 * 96 + 2 * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = _images(32, h=32, w=32)
    aug = build_augment("strong", image_size=32)
    cpu = aug(x, torch.Generator().manual_seed(0))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(0))
    # same random draws (made on the CPU); float arithmetic may round differently on the GPU (FMA), so allow a
    # few values off by one level and a few pixels of rotation landing on the other side of a .5 boundary
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    assert ((gpu.cpu().int() - cpu.int()) != 0).float().mean() < 0.005
    mixer = Mixer(mixup_alpha=0.5, cutmix_alpha=1.0, per_image=True, num_classes=32)
    a = mixer(x.float(), torch.arange(32), torch.Generator().manual_seed(0))
    b = mixer(x.float().cuda(), torch.arange(32).cuda(), torch.Generator().manual_seed(0))
    assert torch.allclose(a[0], b[0].cpu()) and torch.allclose(a[1], b[1].cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_strong_augmentation_never_waits_for_the_gpu() -> None:
    """No step of a noised batch makes Python wait for the GPU: CUDA's sync debug mode raises on a blocking
    host-to-device copy, an .item(), a device-to-host copy or a synchronize (it does not see the stream drain of a
    non_blocking copy from pageable memory; fewlabels.utils.to_device's pinned staging avoids that one). A noised
    student on a GPU is bound by how fast Python queues kernels (benchmarks/results/gpu_check_h200.md)."""
    x = _images(64, h=32, w=32).cuda()
    aug = build_augment("strong", image_size=32)
    mixer = Mixer(mixup_alpha=0.5, cutmix_alpha=1.0, per_image=True, num_classes=10)
    g = torch.Generator().manual_seed(0)
    aug.normalized(x, (0.5,) * 3, (0.25,) * 3, generator=g)  # warm-up: workspaces, pinned-memory cache
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = aug.normalized(x, (0.5,) * 3, (0.25,) * 3, generator=g)
            mixer(out, torch.arange(64, device="cuda") % 10, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_to_device_keeps_values_and_converts_dtype() -> None:
    from fewlabels.utils import to_device

    t = torch.arange(6).view(2, 3).t()  # not contiguous
    out = to_device(t, "cpu", torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, t.float())
    assert to_device(t, torch.device("cpu")) is t  # nothing to move: no copy
    if torch.cuda.is_available():
        gpu = to_device(t, "cuda", torch.int32)
        assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), t.int())


def test_strong_with_no_randaugment_ops_is_weak_plus_cutout_on_both_paths() -> None:
    x = _images(6, h=16, w=16)
    for inp in (x, x.float()):  # uint8 on CPU: the C kernels; float: the batched PyTorch path
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        out = build_augment("strong", image_size=16, ra_num_ops=0)(inp, generator=g1)
        assert out.shape == inp.shape and out.dtype == inp.dtype
        assert torch.equal(out, build_augment("strong", image_size=16, ra_num_ops=0)(inp, generator=g2))

"""Model registry: every model's interface, precision/layout variants, noise modules and weight loading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewlabels.errors import FewLabelsError
from fewlabels.models import (
    DropPath,
    LoadReport,
    create_model,
    list_models,
    load_pretrained,
    mlp_width_for_params,
    read_state_dict,
)

OURS = list_models()
SMALL_INPUT = [m for m in OURS if m.startswith("cnn-") or m == "mlp"]
SHARED_WEIGHTS = Path(__file__).resolve().parents[1] / "../shared/weights"


def build(name: str, num_classes: int = 10, in_chans: int = 3, size: int = 32, **kw) -> nn.Module:
    if name == "mlp":
        kw.setdefault("image_size", size)
        kw.setdefault("hidden", (64, 32))  # small: the default width is tested by test_mlp_default_width
    torch.manual_seed(0)
    return create_model(name, num_classes, in_chans, **kw)


def test_registry_lists_every_family():
    assert {"cnn-tiny", "cnn-s", "cnn-m", "cnn-l", "cnn-xl", "mlp", "resnet20", "resnet32", "resnet44",
            "resnet56"} <= set(OURS)


@pytest.mark.parametrize("name", [*OURS, "timm:resnet18"])
def test_interface_fp32(name):
    model = build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        stages = model.feature_stages(x)
        assert logits.shape == (2, 10)
        assert feats.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), logits)
    assert stages and all(s.ndim == 4 and s.shape[0] == 2 for s in stages)
    assert isinstance(model.get_classifier(), nn.Module)
    head_keys = [k for k in model.state_dict() if k.startswith(model.head_prefixes)]
    assert head_keys and all(model.state_dict()[k].shape[0] == 10 for k in head_keys)


@pytest.mark.parametrize("name", [*OURS, "timm:resnet18"])
def test_bf16_autocast_channels_last(name):
    model = build(name).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("size", [8, 16])
@pytest.mark.parametrize("name", SMALL_INPUT)
def test_small_grayscale_inputs(name, size):
    model = build(name, num_classes=3, in_chans=1, size=size).train()
    x = torch.randn(4, 1, size, size)
    model(x).sum().backward()  # train mode and backward: BN statistics on 1×1 maps must not fail
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.eval()(x.contiguous(memory_format=torch.channels_last)).shape == (4, 3)


@pytest.mark.parametrize("size", [8, 28, 96, 224])
def test_cnn_any_image_size(size):
    model = build("cnn-tiny").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
        maps = model.feature_stages(torch.randn(1, 3, size, size))
    assert [m.shape[-1] for m in maps] == [-(-size // 2), -(-size // 4), -(-size // 8)]  # ceil division


def test_cnn_widths_grow_with_size():
    params = [sum(p.numel() for p in build(n).parameters()) for n in ("cnn-tiny", "cnn-s", "cnn-m", "cnn-l", "cnn-xl")]
    assert params == sorted(params)
    assert build("cnn-m").num_features == 256  # the airbench94 widths 64/256/256


@pytest.mark.parametrize("name", [*OURS, "timm:resnet18"])
def test_reset_classifier(name):
    model = build(name).eval()
    old = model.get_classifier()
    model.reset_classifier(5)
    assert model.get_classifier() is not old
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("name", [*OURS, "timm:resnet18"])
def test_param_depths(name):
    model = build(name)
    depths = model.param_depths()
    assert set(depths) == {n for n, _ in model.named_parameters()}
    head = {n for n in depths if n.startswith(model.head_prefixes)}
    assert head and all(depths[n] == 0 for n in head)
    assert all(d >= 1 for n, d in depths.items() if n not in head)
    assert set(depths.values()) == set(range(max(depths.values()) + 1))  # no gaps: every depth is used
    first = next(iter(depths))  # the stem's first parameter is the deepest
    assert depths[first] == max(depths.values())


@pytest.mark.parametrize("name", ["cnn-s", "cnn-l", "resnet20"])
def test_drop_path_only_in_train_mode(name):
    x = torch.randn(8, 3, 16, 16)
    noisy, clean = build(name, drop_path_rate=0.5), build(name)
    rates = [m.drop_prob for m in noisy.modules() if isinstance(m, DropPath)]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.5)  # linear over depth, last = the rate
    assert not any(isinstance(m, DropPath) for m in clean.modules())
    with torch.no_grad():
        noisy.eval()
        torch.testing.assert_close(noisy(x), noisy(x))
        noisy.train()
        assert not torch.allclose(noisy(x), noisy(x))
        clean.train()
        torch.testing.assert_close(clean(x), clean(x))  # the difference above comes from drop_path alone


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(4000, 2, 3, 3))
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # whole samples dropped or scaled
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)


def test_dropout_before_head_only_in_train_mode():
    model = build("resnet20", drop_rate=0.5)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        feats = model.eval().forward_features(x)
        torch.testing.assert_close(model.forward_head(feats), model.forward_head(feats))
        model.train()
        assert not torch.allclose(model.forward_head(feats), model.forward_head(feats))


def test_mlp_options():
    model = build("mlp", hidden=(128,), act="relu", size=28, in_chans=1)
    assert model.num_features == 128
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(FewLabelsError, match="built for images of shape"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(FewLabelsError, match="drop_rate"):
        build("mlp", drop_path_rate=0.1)
    linear = build("mlp", hidden=())  # no hidden layer: a linear classifier on pixels
    assert linear.num_features == 3 * 32 * 32 and linear.feature_stages(torch.randn(1, 3, 32, 32)) == []


def test_mlp_default_width():
    model = create_model("mlp", 10)
    assert [layer[1].out_features for layer in model.hidden] == [512, 512]


def test_mlp_width_matches_param_count():
    target = sum(p.numel() for p in build("cnn-s").parameters())
    width = mlp_width_for_params(target, in_features=3 * 32 * 32, num_classes=10, layers=2)
    params = sum(p.numel() for p in build("mlp", hidden=(width, width)).parameters())
    assert abs(params - target) / target < 0.01


# ---- errors -------------------------------------------------------------------------------------------------------


def test_unknown_model_suggests_close_names():
    with pytest.raises(FewLabelsError, match="resnet20") as e:
        create_model("resnet2O", 10)
    assert "cnn-m" in str(e.value)  # and lists what is available
    with pytest.raises(FewLabelsError, match="timm:resnet18"):
        create_model("timm:resnet181", 10)


def test_bad_options_are_user_errors():
    with pytest.raises(FewLabelsError, match="widthz"):
        create_model("cnn-m", 10, widthz=3)
    with pytest.raises(FewLabelsError, match="num_classes"):
        create_model("cnn-m", 0)
    with pytest.raises(FewLabelsError, match="drop_path_rate"):
        create_model("resnet20", 10, drop_path_rate=1.0)
    with pytest.raises(FewLabelsError, match="no built-in pretrained"):
        create_model("cnn-m", 10, pretrained=True)
    with pytest.raises(FewLabelsError, match="foo"):
        create_model("timm:resnet18", 10, foo=1)


def _hub_online() -> bool:
    from fewlabels.models.timm_models import hub_reachable

    return hub_reachable(timeout=1.0)


def test_timm_pretrained_offline_is_a_quick_user_error():
    if _hub_online():
        pytest.skip("the Hugging Face hub is reachable: the offline path cannot be tested here")
    start = time.perf_counter()
    with pytest.raises(FewLabelsError, match="pretrained='/path/to/weights.pth'"):
        create_model("timm:resnet18", 10, pretrained=True)
    assert time.perf_counter() - start < 20  # no minute of hub retries


def test_timm_matches_plain_timm():
    import timm

    ours = build("timm:resnet18").eval()
    plain = timm.create_model("resnet18", num_classes=10).eval()
    plain.load_state_dict(ours.state_dict())  # same keys: timm checkpoints load unchanged
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x))
    assert ours.head_prefixes == ("fc.",)


# ---- weight files -------------------------------------------------------------------------------------------------


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


LAYOUTS = {
    "plain.pth": lambda sd: sd,
    "nested.th": lambda sd: {"best_prec1": 91.0, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "nested.pt": lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "epoch": 3},
    "ema.pth": lambda sd: {"ema": {f"module.module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("filename", [*LAYOUTS, "weights.safetensors"])
def test_load_file_layouts(tmp_path, filename):
    source = build("cnn-tiny")
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(source.state_dict(), str(path))
    else:
        torch.save(LAYOUTS[filename](source.state_dict()), path)
    torch.manual_seed(1)
    target = create_model("cnn-tiny", 10)
    report = load_pretrained(target, path, strict=True)
    assert isinstance(report, LoadReport) and not report.dropped and not report.new
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_fewlabels_checkpoint_folders(tmp_path):
    source = build("cnn-tiny")
    for name, seed in (("best", 0), ("last", 1)):
        torch.manual_seed(seed)
        folder = tmp_path / "run" / "checkpoints" / name
        folder.mkdir(parents=True)
        save_file(create_model("cnn-tiny", 10).state_dict(), str(folder / "model.safetensors"))
        (folder / "model.json").write_text("{}")
    target = create_model("cnn-tiny", 10)
    report = load_pretrained(target, tmp_path / "run")
    assert report.source.endswith("checkpoints/best/model.safetensors")  # best is preferred over last
    torch.testing.assert_close(target.stem.conv.weight, source.stem.conv.weight)
    load_pretrained(target, tmp_path / "run" / "checkpoints" / "last")  # a checkpoint folder itself
    load_pretrained(target, tmp_path / "run" / "checkpoints" / "last" / "model.safetensors")


def test_head_replacement_report(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save(build("resnet20", num_classes=10).state_dict(), path)
    model = build("resnet20", num_classes=5)
    report = load_pretrained(model, path)
    assert sorted(report.dropped) == ["linear.bias", "linear.weight"]
    assert sorted(report.new) == ["linear.bias", "linear.weight"]
    assert len(report.loaded) == len(model.state_dict()) - 2 - sum(".num_batches_tracked" in k
                                                                   for k in model.state_dict())
    text = str(report)
    assert "(10, 64) in the file, (5, 64) in the model" in text and "newly initialised" in text
    with pytest.raises(FewLabelsError, match="linear.weight"):
        load_pretrained(model, path, strict=True)


def test_strict_names_missing_and_unexpected_keys(tmp_path):
    state = build("cnn-tiny").state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["stem.conv.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(FewLabelsError) as e:
        load_pretrained(build("cnn-tiny"), path, strict=True)
    assert "extra.weight" in str(e.value) and "stem.conv.weight" in str(e.value)
    report = load_pretrained(build("cnn-tiny"), path)  # non-strict: the rest loads
    assert report.dropped == ["extra.weight"] and report.new == ["stem.conv.weight"]


def test_num_batches_tracked_is_ignored(tmp_path):
    state = {k: v for k, v in build("resnet20").state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "w.th")
    assert not load_pretrained(build("resnet20"), tmp_path / "w.th", strict=True).new


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not a checkpoint", "could not read"),
    ({"note": "no tensors"}, "no state dict"),
    ({"fc.weight": torch.zeros(2, 2)}, "another architecture"),
])
def test_bad_weight_files(tmp_path, content, match):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(FewLabelsError, match=match) as e:
        load_pretrained(build("cnn-tiny"), path)
    assert str(path) in str(e.value)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": build("cnn-tiny").state_dict(), "obj": Path("x")}, path)  # an arbitrary object
    with pytest.raises(FewLabelsError, match="holds Python objects besides tensors .*pathlib") as e:
        read_state_dict(path)
    assert "weights_only" not in str(e.value)  # torch's advice to switch the safety off is not passed on


def test_a_file_matching_only_the_classifier_is_refused(tmp_path):
    head = {k: v for k, v in build("cnn-tiny").state_dict().items() if k.startswith("head.")}
    torch.save(head, tmp_path / "w.pth")
    with pytest.raises(FewLabelsError, match="only the classifier"):
        load_pretrained(build("cnn-tiny"), tmp_path / "w.pth")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(FewLabelsError, match="safetensors"):
        load_pretrained(build("cnn-tiny"), tmp_path / "w.onnx")


def test_pretrained_true_finds_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWLABELS_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FewLabelsError, match=r"resnet20-\*\.th") as e:
        create_model("resnet20", 10, pretrained=True)
    assert str(tmp_path) in str(e.value)
    reference = build("resnet20")
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}},
               tmp_path / "resnet20-0123abcd.th")
    model = create_model("resnet20", 7, pretrained=True)  # another class count: head re-initialised
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    assert model.linear.out_features == 7


def test_pretrained_path_string(tmp_path):
    reference = build("cnn-s")
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("cnn-s", 10, pretrained=str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(model.head.weight, reference.head.weight)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights is not present")
def test_shared_resnet20_loads_strictly():
    path = min(SHARED_WEIGHTS.glob("resnet20-*.th"))
    model = create_model("resnet20", 10).eval()
    report = load_pretrained(model, path, strict=True)
    assert not report.new and not report.dropped
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 32, 32))
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()


def test_patch_whitening_init_decorrelates_the_stem():
    """init_from_data sets the stem to ± whitening filters: on correlated data the stem's first half of channels
    comes out with unit variance and no correlation (interior pixels, where no padding is involved)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16, generator=g) * torch.tensor([1.0, 3.0, 0.3]).view(1, 3, 1, 1)
    x = x + 0.8 * x.roll(1, 3) + 0.5 * x.roll(1, 2) + 0.7 * x[:, :1]  # correlated across pixels and channels
    m = build("cnn-s")
    assert m.init_from_data(x)
    w = m.stem.conv.weight
    half = w.shape[0] // 2
    assert torch.allclose(w[:half], -w[half:])
    y = m.stem.conv(x)[:, :half, 1:-1, 1:-1].permute(0, 2, 3, 1).reshape(-1, half)
    cov = torch.cov(y.T.double())
    assert torch.allclose(cov.diagonal(), torch.ones(half, dtype=torch.float64), atol=0.05)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.05
    assert not build("mlp").init_from_data(x)  # no data-dependent init: says so instead of pretending


def test_patch_stem_variant_whitens_all_directions_and_freezes_its_filters():
    """cnn-*-p2: airbench's 2x2 stem (no padding, bias, 2·C·4 filters, no BatchNorm). init_from_data fills every
    filter (all 2x2 patch directions with both signs), whitens the patches, and freezes the filters but not the bias,
    so the optimizer leaves them out; the stage after it takes the 2·C·4 channels; 8×8 inputs still work."""
    from fewlabels.engine.config import TrainConfig
    from fewlabels.engine.optim import build_optimizer
    from fewlabels.models.cnn import CNN_SIZES, CompactCNN

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16, generator=g) * torch.tensor([1.0, 3.0, 0.3]).view(1, 3, 1, 1)
    x = x + 0.8 * x.roll(1, 3) + 0.5 * x.roll(1, 2)
    m = build("cnn-s-p2")
    assert isinstance(m.stem.conv, nn.Conv2d) and m.stem.conv.kernel_size == (2, 2) and m.stem.conv.out_channels == 24
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.stem.modules())
    assert m.init_from_data(x)
    w = m.stem.conv.weight
    assert w.abs().sum(dim=(1, 2, 3)).min() > 0 and torch.allclose(w[:12], -w[12:])
    y = m.stem.conv(x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12) - m.stem.conv.bias[:12]
    cov = torch.cov(y.T.double())
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.05)
    assert not w.requires_grad and m.stem.conv.bias.requires_grad
    trained = {id(p) for group in build_optimizer(m, TrainConfig()).param_groups for p in group["params"]}
    assert id(w) not in trained and id(m.stem.conv.bias) in trained
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build("cnn-tiny-p2", in_chans=1, size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert build("cnn-s").stem.conv.weight.requires_grad  # the default stem keeps training after whitening
    with pytest.raises(FewLabelsError, match="unknown stem"):
        CompactCNN(CNN_SIZES["cnn-s"], 10, stem="patch3")


def test_translate_tta_averages_shifted_views():
    """predict_logits(tta_translate=1) = ½·plain + ¼·(shift one way) + ¼·(shift the other way), reflect-padded."""
    from fewlabels.eval import predict_logits

    m = build("cnn-tiny").eval()
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    kw = dict(dtype=None, channels_last=False)
    got = predict_logits(m, x, mean, std, tta_translate=1, **kw)
    p = torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect").to(torch.uint8)
    want = (0.5 * predict_logits(m, x, mean, std, **kw) + 0.25 * predict_logits(m, p[:, :, :12, :12], mean, std, **kw)
            + 0.25 * predict_logits(m, p[:, :, 2:, 2:], mean, std, **kw))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, predict_logits(m, x, mean, std, **kw), atol=1e-4)

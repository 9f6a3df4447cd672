"""Probes: shift/equivariance maths against hand-built layers, FC-vs-CNN transform invariants, and both commands
end to end on digits (CPU, a few seconds)."""

import json
import math

import pytest
import torch
from torch import nn

from fewlabels.cli import main
from fewlabels.probes import (
    conditions,
    cumulative_stride,
    equivariance_probe,
    matched_pair,
    permute_pixels,
    pixel_permutation,
    place,
    place_left,
    place_right,
    relative_error,
    shift,
    valid_region,
)


class OneStage(nn.Module):
    """A model with the probe interface around one layer: stage = layer(x), features = global max, head = linear."""

    def __init__(self, layer: nn.Module, channels: int = 4) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(channels, 3)

    def feature_stages(self, x):
        return [self.layer(x)]

    def forward_features(self, x):
        return self.layer(x).amax(dim=(2, 3))

    def forward_head(self, f):
        return self.head(f)


class DenseMap(nn.Module):
    """A fully connected layer whose output is read as a (C, H, W) map: every weight tied to one pixel position."""

    def __init__(self, c_in: int, c_out: int, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c_in * size * size, c_out * size * size)
        self.shape = (c_out, size, size)

    def forward(self, x):
        return self.fc(x.flatten(1)).view(-1, *self.shape)


def _images(n=6, c=2, size=12, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- shifts


def test_shift_circular_is_roll_and_fill_shift_moves_content():
    x = _images()
    assert torch.equal(shift(x, 2, -3, circular=True), torch.roll(x, (2, -3), (2, 3)))
    y = shift(x, 2, -3, fill=torch.tensor([7.0, -7.0]))
    assert torch.equal(y[:, :, 2:, :-3], x[:, :, :-2, 3:])  # content moved 2 down, 3 left
    assert (y[:, 0, :2] == 7).all() and (y[:, 1, :, -3:] == -7).all()  # per-channel fill in the uncovered band
    assert (shift(x, 0, 12) == 0).all()  # shifted out entirely


def test_valid_region_and_strides():
    rows, cols = valid_region(10, 8, 2, -3, margin=1)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (3, 9, 1, 4)
    assert len(range(16)[valid_region(4, 4, 0, 4, margin=0)[1]]) == 0  # nothing left
    # ceil-mode pools: 28 → 14 → 7 → 4 are strides 2, 4, 8; 32 → 32 → 16 is 1, 2
    assert [cumulative_stride((28, 28), (s, s)) for s in (14, 7, 4)] == [2, 4, 8]
    assert cumulative_stride((32, 32), (32, 32)) == 1 and cumulative_stride((16, 32), (8, 16)) == 2


def test_relative_error_reference():
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert relative_error(a, b).tolist() == pytest.approx([4.0 / 3.0, 0.0, math.inf])  # ‖a − b‖ / ‖b‖ per row


# ---------------------------------------------------------------------------------------------------- equivariance


def test_circular_conv_is_equivariant_and_its_max_pool_invariant():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
    r = equivariance_probe(OneStage(conv), _images(), shifts=[1, 2, 5], circular=True)
    assert r["stages"][0]["stride"] == 1
    for row in r["rows"]:
        assert row["stage_errors"][0] < 1e-5  # equivariant up to float rounding
        assert row["pooled_change"] < 1e-5 and row["prediction_change"] == 0.0  # global max: invariant


def test_zero_padded_conv_needs_the_border_cropped():
    torch.manual_seed(0)
    model = OneStage(nn.Conv2d(2, 4, 3, padding=1))  # zero padding, background fill 0.5: the border differs
    cropped = equivariance_probe(model, _images(), shifts=[2], fill=0.5, margin=1)
    uncropped = equivariance_probe(model, _images(), shifts=[2], fill=0.5, margin=0)
    assert max(r["stage_errors"][0] for r in cropped["rows"]) < 1e-5
    assert min(r["stage_errors"][0] for r in uncropped["rows"]) > 1e-3


def test_fc_layer_is_not_equivariant():
    torch.manual_seed(0)
    r = equivariance_probe(OneStage(DenseMap(2, 4, 12)), _images(), shifts=[1, 2], circular=True)
    assert min(row["stage_errors"][0] for row in r["rows"]) > 0.5


def test_undivisible_shift_of_a_strided_stage_is_nan_and_said():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="circular")  # 12 → 6: stride 2
    r = equivariance_probe(OneStage(conv), _images(), shifts=[1, 2], circular=True, labels=torch.zeros(6).long())
    errors = {(row["shift"], row["direction"]): row["stage_errors"][0] for row in r["rows"]}
    assert math.isnan(errors[(1, "horizontal")]) and math.isnan(errors[(1, "vertical")])
    assert errors[(2, "horizontal")] < 1e-5 and errors[(2, "vertical")] < 1e-5
    assert any("stride 2 does not divide 1" in n for n in r["notes"])
    assert 0.0 <= r["accuracy"] <= 1.0 and all(row["accuracy"] is not None for row in r["rows"])


# ---------------------------------------------------------------------------------------------------- FC vs CNN


def test_place_left_right_keep_the_pixels():
    x = torch.randint(1, 256, (5, 3, 8, 6), dtype=torch.uint8)
    left, right = place_left(x), place_right(x)
    assert left.shape == right.shape == (5, 3, 8, 12) and left.dtype == torch.uint8
    assert torch.equal(left[..., :6], x) and (left[..., 6:] == 0).all()
    assert torch.equal(right[..., 6:], x) and (right[..., :6] == 0).all()
    assert left.sum() == right.sum() == x.sum()
    assert torch.equal(place(x, "right", width=9)[..., 3:], x)  # overlapping canvas
    with pytest.raises(ValueError):
        place(x, "left", width=5)


def test_permutation_is_a_seeded_bijection_shared_by_train_and_test():
    perm = pixel_permutation(7, 5, seed=3)
    assert torch.equal(perm.sort().values, torch.arange(35))
    assert torch.equal(perm, pixel_permutation(7, 5, seed=3)) and not torch.equal(perm, pixel_permutation(7, 5, 4))
    x = torch.randint(0, 256, (4, 3, 7, 5), dtype=torch.uint8)
    y = permute_pixels(x, perm)
    assert torch.equal(y.flatten(2)[:, :, perm.argsort()].view_as(x), x)  # invertible: nothing lost
    assert torch.equal(y[:, :, 0, 0], x.flatten(2)[:, :, perm[0]])  # a pixel keeps its colour across channels
    train_tf, tests = conditions(7, 5, seed=3)["permuted"]
    assert torch.equal(train_tf(x), y) and torch.equal(tests["permuted"](x), y)
    train_tf, tests = conditions(7, 5)["shifted"]
    assert torch.equal(train_tf(x), place_left(x)) and torch.equal(tests["shifted"](x), place_right(x))


@pytest.mark.parametrize("hw", [(16, 16), (16, 32), (28, 56)])
def test_matched_pair_parameter_counts_within_ten_percent(hw):
    mlp, cnn, info = matched_pair("cnn-tiny", 10, 1, hw)
    assert abs(info["mlp_params"] / info["cnn_params"] - 1) < 0.1
    assert mlp(torch.zeros(2, 1, *hw)).shape == cnn(torch.zeros(2, 1, *hw)).shape == (2, 10)


# ---------------------------------------------------------------------------------------------------- commands


def test_probe_commands_write_tables_and_plots(tmp_path):
    run = tmp_path / "fc"
    rc = main(["probe", "fc-vs-cnn", "--data", "digits", "--labels", "300", "--epochs", "1", "--batch-size", "100",
               "--out", str(run), "--quiet"])
    assert rc == 0
    for name in ("fc_vs_cnn.json", "fc_vs_cnn.md", "fc_vs_cnn.png", "config.yaml"):
        assert (run / name).is_file(), name
    res = json.loads((run / "fc_vs_cnn.json").read_text())
    for key in ("fc", "cnn"):
        assert set(res[key]) >= {"standard", "shifted", "permuted"}
        assert all(0.0 <= v <= 1.0 for v in res[key].values())
    assert res["train_images"] == 300 and res["params"]["fc"]["shifted"] > res["params"]["fc"]["standard"]
    assert "| FC (mlp) |" in (run / "fc_vs_cnn.md").read_text()

    # the probe finds the data in the run folder above the checkpoint
    out = tmp_path / "eq"
    rc = main(["probe", "equivariance", str(run / "standard-cnn"), "--shifts", "2,4", "--num-images", "64",
               "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("equivariance.json", "equivariance.md", "equivariance.png"):
        assert (out / name).is_file(), name
    res = json.loads((out / "equivariance.json").read_text())
    assert res["data"] == "digits" and res["images"] == 64 and len(res["rows"]) == 4
    assert res["rows"][0]["stage_errors"][0] is not None and res["rows"][0]["stage_errors"][1] is None  # 2 px


def test_probe_equivariance_needs_a_model(capsys):
    assert main(["probe", "equivariance"]) == 2
    assert "needs a model" in capsys.readouterr().err


def test_python_api_is_exported():
    import fewlabels

    assert callable(fewlabels.probe_equivariance) and callable(fewlabels.probe_fc_vs_cnn)

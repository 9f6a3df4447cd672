"""Calibration: ECE and NLL, temperature scaling, `fewlabels calibrate`, `--calibrate`, and the commands that use the
stored temperature (evaluate, predict, pseudo-labelling)."""

import json
import math

import pytest
import torch

from fewlabels import calibrate, evaluate, predict, train
from fewlabels.cli import main
from fewlabels.data import ImageSet
from fewlabels.engine.checkpoint import load_model, read_meta
from fewlabels.eval import calibration, classification_report, fit_temperature, predict_logits
from fewlabels.utils import pick_dtype

COMMON = {"data": "digits", "hflip": False, "quiet": True, "batch_size": 64, "device": "cpu"}


def test_ece_by_hand():
    # two images at confidence 0.9 (one right, one wrong) and two at 0.6 (both right): bins (0.8667, 0.9333] with
    # accuracy 0.5 and (0.5333, 0.6] with accuracy 1 → ECE = 2/4·|0.5 − 0.9| + 2/4·|1 − 0.6| = 0.4
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0, 1])
    c = calibration(p.log(), labels)
    assert c["ece"] == pytest.approx(0.4, abs=1e-6)
    assert c["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 4, abs=1e-6)
    full = [b for b in c["reliability"] if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in full] == [(2, 1.0), (2, 0.5)]
    assert sum(b["count"] for b in c["reliability"]) == 4 and c["bins"] == 15
    assert math.isnan(calibration(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))["ece"])


def test_temperature_scaling_recovers_a_known_temperature():
    # labels drawn from softmax(z): z is calibrated, so logits 3·z are over-confident by exactly T = 3
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=g) * 2
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.03)
    assert calibration(3 * z / t, y)["ece"] < calibration(3 * z, y)["ece"] / 5
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.03)
    report = classification_report(3 * z, y, [str(i) for i in range(10)])
    assert {"ece", "nll", "reliability"} <= set(report)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "run"
    res = train(out=str(out), model="cnn-tiny", labels_per_class=20, epochs=6, min_steps_per_epoch=6, calibrate=True,
                **COMMON)
    return out, res


def test_calibrate_at_the_end_of_training_stores_the_temperature(run):
    out, res = run
    cal = res["calibration"]
    t = read_meta(out)["temperature"]
    assert t == cal["temperature"] > 0
    assert cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-6  # fitted on these: NLL cannot rise
    assert {"ece_before", "ece_after", "nll_before", "nll_after", "n"} <= set(cal["test"])
    assert res["report"]["temperature"] == t and res["ece"] == res["report"]["ece"]
    assert json.loads((out / "results.json").read_text())["calibration"]["temperature"] == t


def test_calibrate_command_and_the_commands_that_use_the_temperature(run, tmp_path, capsys):
    out, _ = run
    res = calibrate(model_path=str(out), quiet=True, device="cpu")
    assert json.loads((out / "calibration.json").read_text())["temperature"] == res["temperature"]
    t = read_meta(out)["temperature"]
    assert t == pytest.approx(res["temperature"])
    # evaluate: the same accuracy, the ECE of the calibrated probabilities
    rep = evaluate(model_path=str(out), data="digits", device="cpu")
    model, meta = load_model(out, "cpu")
    ds_test = __import__("fewlabels.data", fromlist=["load_dataset"]).load_dataset("digits").test
    logits = predict_logits(model, ds_test.images, meta["mean"], meta["std"], device=torch.device("cpu"),
                            dtype=torch.bfloat16 if rep["temperature"] else None)
    assert rep["temperature"] == t
    assert rep["ece"] == pytest.approx(calibration(logits / t, ds_test.labels)["ece"], abs=0.02)
    # predict: probabilities are softmax(logits / T)
    img = tmp_path / "x.png"
    from PIL import Image
    Image.fromarray(ds_test.images[0, 0].numpy()).save(img)
    rows = predict(model_path=str(out), inputs=[str(img)], top_k=1, quiet=True, device="cpu")
    from fewlabels.data.folder import decode_files
    x = decode_files([str(img)], (meta["in_chans"], *meta["image_size"]), progress=False)
    z = predict_logits(model, x, meta["mean"], meta["std"], device=torch.device("cpu"),
                       dtype=pick_dtype("auto", torch.device("cpu")))  # as predict computes them
    assert rows[0]["top"][0]["prob"] == pytest.approx(float((z / t).softmax(1).max()), abs=1e-4)
    # the CLI prints the calibration line
    assert main(["evaluate", str(out), "--data", "digits", "--device", "cpu"]) in (0, None)
    assert "calibration: ECE" in capsys.readouterr().out


def test_pseudo_labels_use_the_teachers_temperature(monkeypatch):
    from fewlabels.methods import pseudolabel as pl

    z = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    monkeypatch.setattr(pl, "pool_logits", lambda *a, **k: z.clone())
    cfg = pl.PseudoLabelCommand(threshold=0.0, balance=False)
    pool = ImageSet(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.full((3,), -1), ["a", "b", "c"])
    out = pl.teach(None, {"temperature": 2.0}, pool, cfg, torch.device("cpu"), torch.ones(3))
    assert torch.allclose(out.confidence.sort().values, (z / 2).softmax(1).max(1).values.sort().values)


def test_calibration_needs_validation_images(tmp_path, capsys):
    out = tmp_path / "noval"
    train(out=str(out), model="cnn-tiny", labels_per_class=10, epochs=1, val=0, **COMMON)
    assert main(["calibrate", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewlabels: error: ") and "--val" in err and "Traceback" not in err
    assert main(["calibrate", str(tmp_path)]) == 2  # not a run folder

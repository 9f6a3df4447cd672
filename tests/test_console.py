"""What runs print (console.Console: --quiet, default, -v) and what --tensorboard writes."""

import builtins
import json

import pytest
import torch

from fewlabels import selftrain, train, transfer
from fewlabels.cli import main
from fewlabels.console import Console
from fewlabels.engine.config import TrainConfig
from fewlabels.engine.loop import TrainSet, Watch, fit
from fewlabels.errors import FewLabelsError
from fewlabels.targets import one_hot

FAST = {"data": "digits", "batch_size": 64, "device": "cpu", "hflip": False}


class Capture(Console):
    """A Console that keeps its lines."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.lines: list[str] = []

    def __call__(self, message: str = "") -> None:
        if not self.quiet:
            self.lines.append(message)


def _fit_lines(cap: Capture, epochs: int = 4) -> list[str]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    ts = TrainSet(x, one_hot(y, 3), torch.ones(64, dtype=torch.bool), norm=((0.5,), (0.25,)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    fit(model, ts, TrainConfig(epochs=epochs, batch_size=32, device="cpu", augment="none", hflip=False,
                               channels_last=False), watch=Watch(log=cap))
    return [line for line in cap.lines if line.startswith("epoch=")]


def test_default_prints_the_last_epoch_and_at_most_one_line_per_interval():
    assert len(_fit_lines(Capture(every_s=3600))) == 1  # a fast run: only its last epoch
    assert _fit_lines(Capture(every_s=3600))[0].startswith("epoch=4 ")
    assert len(_fit_lines(Capture(every_s=0))) == 4  # every epoch once the interval has passed


def test_verbose_prints_every_epoch_and_quiet_nothing():
    assert len(_fit_lines(Capture(verbose=True, every_s=3600))) == 4
    assert _fit_lines(Capture(quiet=True, verbose=True)) == []


def test_cli_verbose_short_flag(tmp_path, capsys):
    assert main(["train", *_flags(FAST), "--epochs", "3", "--out", str(tmp_path / "a")]) in (0, None)
    default = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch=")]
    assert main(["train", "-v", *_flags(FAST), "--epochs", "3", "--out", str(tmp_path / "b")]) in (0, None)
    verbose = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch=")]
    assert len(default) == 1 and len(verbose) == 3
    assert main(["train", *_flags(FAST), "--epochs", "3", "--quiet", "--out", str(tmp_path / "c")]) in (0, None)
    assert capsys.readouterr().out == ""


def _flags(opts: dict) -> list[str]:
    out = []
    for k, v in opts.items():
        out += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    return out


def test_the_demo_fits_on_one_screen(tmp_path, capsys):
    # scripts/demo.sh's command, as the README's first command runs it
    args = ["selftrain", "--data", "digits", "--labels-per-class", "5", "--student-models", "cnn-s,cnn-s",
            "--student-epochs", "12", "--out", str(tmp_path / "demo")]
    assert main(args) in (0, None)
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert 5 < len(lines) <= 30, "\n".join(lines)
    assert any("points from self-training" in line for line in lines)


def test_transfer_results_have_the_accuracy_at_the_top(tmp_path):
    src = train(**FAST, epochs=2, quiet=True, out=str(tmp_path / "src"))
    res = transfer(**FAST, pretrained=str(tmp_path / "src"), mode="probe", probe_epochs=5, quiet=True,
                   out=str(tmp_path / "t"))
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert saved["mode"] == "probe" and saved["test_acc"] == res["probe"]["test_acc"] == res["test_acc"]
    assert "test_acc" in src


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def test_tensorboard_train_and_selftrain(tmp_path):
    pytest.importorskip("tensorboard")
    train(**FAST, epochs=3, quiet=True, tensorboard=True, out=str(tmp_path / "t"))
    ea = _events(tmp_path / "t" / "tensorboard")
    tags = ea.Tags()
    assert {"loss/train", "lr", "accuracy/val", "accuracy/test"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("accuracy/val")] == sorted({e.step for e in ea.Scalars("accuracy/val")})
    assert len(ea.Scalars("loss/train")) == 3 and "train/augmented" in tags["images"]
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [round(e.value, 4) for e in ea.Scalars("accuracy/val")] == [round(m["val_acc"], 4) for m in metrics]

    selftrain(**FAST, labels_per_class=5, teacher_epochs=3, student_epochs=2, rounds=1, quiet=True, tensorboard=True,
              out=str(tmp_path / "s"))
    rounds = _events(tmp_path / "s" / "tensorboard")
    assert [e.step for e in rounds.Scalars("rounds/val_acc")] == [0, 1]
    assert "pseudo_labels/by_class" in rounds.Tags()["images"]
    assert "loss/train" in _events(tmp_path / "s" / "round1" / "tensorboard").Tags()["scalars"]


def test_tensorboard_missing_is_one_clear_error_before_any_work(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(FewLabelsError, match=r"pip install 'fewlabels\[tensorboard\]'"):
        train(**FAST, epochs=1, quiet=True, tensorboard=True, out=str(tmp_path / "t"))
    assert not (tmp_path / "t" / "checkpoints").exists()

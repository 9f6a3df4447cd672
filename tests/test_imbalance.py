"""Imbalanced classes (issue 26): per-class metrics against scikit-learn, the balanced sampler, class-weighted loss,
and the per-class report of `train` and `evaluate`."""

import json

import pytest
import torch
from torch import nn

from fewlabels import losses
from fewlabels.engine import loop
from fewlabels.engine.config import TrainConfig
from fewlabels.engine.loop import (
    TrainSet,
    Watch,
    _batches,
    balanced_class_weights,
    balanced_sampling_probs,
    fit,
    row_classes,
)
from fewlabels.errors import FewLabelsError
from fewlabels.eval import classification_report
from fewlabels.models import create_model

NORM = ((0.5,) * 3, (0.25,) * 3)
def _silent(*_):
    pass


QUIET = Watch(log=_silent)


def test_classification_report_matches_sklearn():
    """Imbalanced labels, a class never predicted (precision 0, not NaN), a class predicted but without images (it
    counts in macro-F1 as in sklearn, not in balanced accuracy) and a class in neither (left out of both)."""
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    k, n = 7, 600
    labels = torch.multinomial(torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05, 0, 0]), n, replacement=True, generator=g)
    logits = torch.randn(n, k, generator=g) + 2.0 * nn.functional.one_hot(labels, k)
    logits[:, 3] = -1e9  # class 3 has images but is never predicted
    logits[:, 6] = -1e9  # class 6 has no images and is never predicted
    logits[:5, 5] = 1e9  # class 5 has no images but is predicted 5 times
    classes = [f"c{i}" for i in range(k)]
    rep = classification_report(logits, labels, classes)
    y, p = labels.numpy(), logits.argmax(1).numpy()
    prec, rec, f1, sup = metrics.precision_recall_fscore_support(y, p, labels=list(range(k)), zero_division=0)
    for i, c in enumerate(classes):
        m = rep["per_class"][c]
        assert m["precision"] == pytest.approx(prec[i]) and m["recall"] == pytest.approx(rec[i]), c
        assert m["f1"] == pytest.approx(f1[i]) and m["support"] == sup[i], c
        assert m["recall"] == pytest.approx(rep["per_class_accuracy"][c])
    assert rep["per_class"]["c3"]["precision"] == 0.0 and rep["per_class"]["c3"]["support"] > 0
    assert rep["macro_f1"] == pytest.approx(metrics.f1_score(y, p, average="macro", zero_division=0))
    with pytest.warns(UserWarning):  # sklearn: "y_pred contains classes not in y_true"
        assert rep["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(y, p))
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(y, p)) and rep["n"] == n
    assert rep["classes"] == classes and sum(map(sum, rep["confusion_matrix"])) == n
    json.dumps(rep, allow_nan=False)  # plain JSON types
    empty = classification_report(logits[:0], labels[:0], classes)
    assert empty["macro_f1"] != empty["macro_f1"] and empty["balanced_accuracy"] != empty["balanced_accuracy"]


def _imbalanced(n_major=90, n_minor=10, pseudo=None):
    """A 9:1 two-class set: class 0 then class 1, with a learnable signal (a colour channel off for class 1)."""
    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.zeros(n_major, dtype=torch.long), torch.ones(n_minor, dtype=torch.long)])
    images = torch.randint(0, 256, (len(y), 3, 16, 16), generator=g, dtype=torch.uint8)
    images[y == 1, 0] = 0
    return TrainSet(images, nn.functional.one_hot(y, 2).float(), torch.ones(len(y), dtype=torch.bool), pseudo,
                    norm=NORM)


def test_balanced_sampler_equalises_classes_deterministically():
    """On a 9:1 set the balanced draws are ~1:1, as many batches of the same size as the uniform sampler's, and the
    same for the same generator seed (a resumed run replays its batches)."""
    ts = _imbalanced()
    cls = row_classes(ts.targets, ts.has_label)
    assert balanced_sampling_probs(cls).sum().item() == pytest.approx(1.0)
    uniform = _batches(ts, 16, 0.0, torch.Generator().manual_seed(3), min_steps=10)
    drawn = [_batches(ts, 16, 0.0, torch.Generator().manual_seed(3 + e), min_steps=10, classes=cls)
             for e in range(20)]
    assert [b.numel() for b in drawn[0]] == [b.numel() for b in uniform]
    idx = torch.cat([torch.cat(b) for b in drawn])
    minority = (idx >= 90).float().mean().item()
    assert 0.45 < minority < 0.55, minority  # uniform: 0.1
    again = _batches(ts, 16, 0.0, torch.Generator().manual_seed(3), min_steps=10, classes=cls)
    assert all(torch.equal(a, b) for a, b in zip(drawn[0], again))
    assert not all(torch.equal(a, b) for a, b in zip(drawn[0], drawn[1]))


def test_balanced_sampler_with_unlabelled_ratio_balances_the_labelled_part_only():
    """With --unlabelled-ratio the labelled part of each batch is drawn by class and the pseudo-labelled part stays
    one pass (every pseudo-label once); rows without a label keep their uniform share of the one-pool draws."""
    ts = _imbalanced(90, 10)
    pseudo = torch.zeros(100, dtype=torch.bool)
    pseudo[:40] = True  # 40 pseudo-labelled (class 0); labelled: 50 of class 0, 10 of class 1
    ts.pseudo = pseudo
    cls = row_classes(ts.targets, ts.has_label)
    batches = _batches(ts, 8, 1.0, torch.Generator().manual_seed(0), classes=cls)
    assert len(batches) == 10 and all(b.numel() == 8 for b in batches)
    ps = torch.cat([b[4:] for b in batches])
    assert sorted(ps.tolist()) == list(range(40))
    # balanced over the labelled part's own counts (50:10, not 90:10 with the pseudo-labels): class 1 ~1/2
    lab = torch.cat([b[:4] for e in range(50)
                     for b in _batches(ts, 8, 1.0, torch.Generator().manual_seed(e), classes=cls)])
    assert not bool(pseudo[lab].any())
    assert 0.4 < (lab >= 90).float().mean().item() < 0.6
    # a row without a label keeps 1/n: 20 unlabelled of 100 still get 20 % of the draws
    has_label = torch.ones(100, dtype=torch.bool)
    has_label[:20] = False
    p = balanced_sampling_probs(row_classes(ts.targets, has_label))
    assert p[:20].sum().item() == pytest.approx(0.2) and p[90:].sum().item() == pytest.approx(0.4)


def test_balanced_class_weights_are_sklearns():
    utils = pytest.importorskip("sklearn.utils.class_weight")
    import numpy as np

    y = torch.tensor([0] * 60 + [2] * 30 + [3] * 10)  # class 1 absent: weights for the classes present
    targets = nn.functional.one_hot(y, 5).float() * 0.9 + 0.02  # smoothed rows: the class is the argmax
    has_label = torch.ones(100, dtype=torch.bool)
    has_label[-5:] = False  # no label: weight 1, not counted
    cls = row_classes(targets, has_label)
    assert cls[-5:].tolist() == [-1] * 5
    w = balanced_class_weights(cls)
    ref = utils.compute_class_weight("balanced", classes=np.array([0, 2, 3]), y=y[:95].numpy())
    assert w[0].item() == pytest.approx(ref[0]) and w[60].item() == pytest.approx(ref[1])
    assert w[90].item() == pytest.approx(ref[2]) and w[-5:].tolist() == [1.0] * 5
    assert w[:95].mean().item() == pytest.approx(1.0)  # the loss keeps its scale


def _record_targets(monkeypatch):
    """Every target batch the supervised loss sees."""
    seen = []
    real = losses.soft_cross_entropy
    monkeypatch.setattr(losses, "soft_cross_entropy", lambda z, t, *a, **k: (seen.append(t.detach().cpu()),
                                                                            real(z, t, *a, **k))[1])
    return seen


def _model():
    torch.manual_seed(0)
    return create_model("cnn-tiny", 2)


CFG = dict(epochs=2, batch_size=16, lr=0.05, precision="fp32", augment="none", channels_last=False, device="cpu")


def test_class_weights_scale_each_images_loss_and_leave_the_callers_targets(monkeypatch):
    """class_weights=balanced: each target row reaching the loss is w_c · its one-hot (so the loss is w_c · CE), with
    the 9:1 set's weights 100/(2·90) and 100/(2·10); the caller's TrainSet is unchanged. Under MixUp the rows mix
    the weights linearly."""
    ts = _imbalanced()
    before = ts.targets.clone()
    seen = _record_targets(monkeypatch)
    res = fit(_model(), ts, TrainConfig(class_weights="balanced", **CFG), watch=QUIET)
    assert torch.equal(ts.targets, before) and len(res.history) == 2
    rows = torch.cat(seen)
    w0, w1 = 100 / (2 * 90), 100 / (2 * 10)
    assert torch.allclose(rows.sum(1)[rows[:, 0] > 0], torch.tensor(w0))
    assert torch.allclose(rows.sum(1)[rows[:, 1] > 0], torch.tensor(w1))
    seen.clear()
    fit(_model(), ts, TrainConfig(class_weights="balanced", mixup=1.0, **CFG), watch=QUIET)
    mass = torch.cat(seen).sum(1)
    assert bool((mass >= w0 - 1e-5).all() and (mass <= w1 + 1e-5).all())
    assert bool(((mass > w0 + 1e-3) & (mass < w1 - 1e-3)).any())  # mixed pairs of the two classes
    seen.clear()
    fit(_model(), ts, TrainConfig(sampler="balanced", **CFG), watch=QUIET)
    rows = torch.cat(seen)
    assert torch.allclose(rows.sum(1), torch.tensor(1.0))  # the sampler does not weight
    assert 0.35 < rows[:, 1].mean().item() < 0.65  # but draws the minority class about half the time (uniform: 0.1)


def test_combinations_that_cannot_work_are_refused_before_training():
    started = []
    hook = lambda *_: started.append(1)  # noqa: E731
    with pytest.raises(FewLabelsError, match="--class-weights balanced and --sampler balanced .* keep one"):
        fit(_model(), _imbalanced(), TrainConfig(class_weights="balanced", sampler="balanced", **CFG), watch=QUIET,
            on_epoch_start=hook)

    def own_loss(model, x, batch):
        return model(x).pow(2).mean()

    with pytest.raises(FewLabelsError, match=r"this method's loss \(own_loss\).*--sampler balanced"):
        fit(_model(), _imbalanced(), TrainConfig(class_weights="balanced", **CFG), loss_fn=own_loss, watch=QUIET,
            on_epoch_start=hook)
    with pytest.raises(FewLabelsError, match="'sampler': 'classwise' is not one of uniform, balanced"):
        fit(_model(), _imbalanced(), TrainConfig(sampler="classwise", **CFG), watch=QUIET, on_epoch_start=hook)
    assert not started
    # the sampler works with any loss
    fit(_model(), _imbalanced(), TrainConfig(sampler="balanced", **{**CFG, "epochs": 1}), watch=QUIET, loss_fn=own_loss)


def test_best_model_is_the_checkpoint_saved_as_best(tmp_path, monkeypatch):
    """fit's `model` is the last epoch's; best_model() has the weights of checkpoints/best, here epoch 1's (the
    validation score falls in epoch 2)."""
    scores = iter([0.9, 0.5])
    monkeypatch.setattr(loop, "_evaluate", lambda m, evals, *a: {"val_acc": next(scores)} if evals else {})
    after_epoch_1 = {}

    def keep(model, epoch):
        if epoch == 1:
            after_epoch_1.update({k: v.clone() for k, v in model.state_dict().items()})

    ts = _imbalanced()
    res = fit(_model(), ts, TrainConfig(**CFG), watch=Watch(evals={"val": None}, run_dir=tmp_path, log=_silent),
              on_epoch_start=keep)
    assert res.final["epoch"] == 1
    best = res.best_model()
    assert best is not res.model
    for k, v in best.state_dict().items():
        assert torch.equal(v, after_epoch_1[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(best.parameters(), res.model.parameters()))
    plain = fit(_model(), ts, TrainConfig(**{**CFG, "epochs": 1}), watch=QUIET)  # no run folder
    assert plain.best_model() is plain.model


FAST = dict(epochs=2, min_steps_per_epoch=8, batch_size=64, model="cnn-tiny", hflip=False, labels_per_class=10,
            quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import fewlabels

    run = tmp_path_factory.mktemp("imb") / "r"
    return run, fewlabels.train(data="digits", out=str(run), **FAST)


def test_train_results_have_the_best_models_per_class_report(trained):
    run, out = trained
    res = json.loads((run / "results.json").read_text())
    rep = res["report"]
    assert rep["on"] == "test" and rep["n"] == 359 and len(rep["per_class"]) == 10
    assert res["macro_f1"] == rep["macro_f1"] and res["balanced_accuracy"] == rep["balanced_accuracy"]
    assert rep["accuracy"] == pytest.approx(res["test_acc"], abs=1e-9)  # of the epoch saved as best
    assert sum(m["support"] for m in rep["per_class"].values()) == 359 and len(rep["confusion_matrix"]) == 10
    assert out["report"]["macro_f1"] == rep["macro_f1"]


def test_evaluate_prints_per_class_precision_recall_and_macro_f1(trained, tmp_path, capsys):
    from fewlabels.cli import main

    run, out = trained
    assert main(["evaluate", str(run), "--data", "digits", "--out", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[2].split()[0] == "0" and len(lines[2].split()) == 5
    rep = json.loads((tmp_path / "e.json").read_text())
    assert f"macro-F1 {rep['macro_f1']:.4f}" in text and f"balanced accuracy {rep['balanced_accuracy']:.4f}" in text
    assert rep["macro_f1"] == pytest.approx(out["macro_f1"], abs=1e-9)  # the same model as train's report


def test_imbalance_options_reach_every_training_command():
    from fewlabels.cli import build_parser

    parser = build_parser()
    for cmd in (["train"], ["transfer"], ["selftrain"], ["distill"], ["probe", "fc-vs-cnn"]):
        args = parser.parse_args([*cmd, "--class-weights", "balanced", "--sampler", "uniform"])
        assert (args.class_weights, args.sampler) == ("balanced", "uniform"), cmd
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--sampler", "weighted"])

"""The training loop's pieces: airbench's lookahead."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from fewlabels.engine.checkpoint import read_meta
from fewlabels.engine.config import TrainConfig
from fewlabels.engine.loop import FeatureSet, TrainSet, Watch, fit
from fewlabels.engine.optim import Lookahead, build_optimizer, norm_bias_names, set_lr
from fewlabels.errors import FewLabelsError
from fewlabels.models import create_model


def _silent(*_):
    pass


QUIET = Watch(log=_silent)

def test_lookahead_pulls_to_the_slow_copy_every_k_steps():
    """Every k steps: slow ← slow + (1 − d)(fast − slow) with d = decay^k · progress³, then fast ← slow; other steps
    leave the weights alone; integer buffers are untouched; finish() leaves the model on the slow copy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    la = Lookahead(model, decay=0.9, every=2)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    la.step(model, step=0, total=4)  # 1 step done: not a multiple of 2, nothing happens
    assert torch.allclose(model[0].weight, w0 + 1)
    la.step(model, step=1, total=4)  # 2 of 4 done: d = 0.9² · 0.5³
    d = 0.9 ** 2 * 0.5 ** 3
    expect = w0 + (1 - d) * 1.0
    assert torch.allclose(model[0].weight, expect, atol=1e-6)
    assert torch.allclose(la.state_dict()["0.weight"], expect, atol=1e-6)
    assert "1.num_batches_tracked" not in la.state_dict() and int(model[1].num_batches_tracked) == 7
    with torch.no_grad():
        model[0].weight.add_(5.0)
    la.finish(model)
    assert torch.allclose(model[0].weight, expect, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(decay=0.0), dict(decay=1.0), dict(decay=0.9, every=0)])
def test_lookahead_rejects_bad_settings(kw):
    with pytest.raises(FewLabelsError, match="lookahead"):
        Lookahead(nn.Linear(2, 2), **kw)


def _data(n=96, k=4):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % k
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    images[:, y % 3] = 0  # a learnable signal: one colour channel off per class group
    return TrainSet(images, nn.functional.one_hot(y, k).float(), torch.ones(n, dtype=torch.bool),
                    norm=((0.5,) * 3, (0.25,) * 3))


def _model():
    torch.manual_seed(0)
    return create_model("cnn-tiny", 4)


def _interrupt_at(stop_epoch: int):
    """An on_epoch_start hook that interrupts the run (as Ctrl-C would) when epoch `stop_epoch` starts."""
    def hook(_model, epoch):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
    return hook


def test_lookahead_run_resumes_exactly(tmp_path):
    """A lookahead run stopped after an epoch and resumed from its run folder ends on the same weights as an
    uninterrupted run: the slow copy is part of the saved training state."""
    # on the CPU: exact resumes need deterministic arithmetic, and cuDNN picks non-deterministic kernels
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, lookahead=0.9, lookahead_every=2, precision="fp32",
                      augment="none", channels_last=False, device="cpu")
    whole = fit(_model(), _data(), cfg, watch=QUIET).model

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _data(), cfg, watch=Watch(run_dir=run, log=_silent), on_epoch_start=_interrupt_at(2))
    resumed = fit(_model(), _data(), cfg, watch=Watch(run_dir=run, log=_silent)).model
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    # and the lookahead changed the run: without it the weights differ
    plain = fit(_model(), _data(), cfg.replace(lookahead=0.0), watch=QUIET).model
    assert any(not torch.allclose(a, b) for a, b in zip(plain.parameters(), whole.parameters()))


def test_a_diverged_run_stops_naming_the_step_and_keeps_the_last_good_weights(tmp_path):
    """A NaN training loss stops the run with the step and the fix (a lower learning rate), before that epoch's
    weights replace the last good ones."""
    from fewlabels.engine.checkpoint import read_meta
    from fewlabels.losses import CrossEntropy

    class GoesBad(CrossEntropy):
        calls = 0

        def __call__(self, model, x, batch):
            GoesBad.calls += 1
            loss = super().__call__(model, x, batch)
            return loss * float("nan") if GoesBad.calls >= 9 else loss

    cfg = TrainConfig(epochs=3, batch_size=16, min_steps_per_epoch=0, precision="fp32", augment="none",
                      channels_last=False)  # 6 steps an epoch: step 9 is in epoch 2
    with pytest.raises(FewLabelsError, match=r"loss became nan at epoch 2, step 9 of 18: .*--lr 0.1\b.*"
                                             r"keeps the weights of epoch 1"):
        fit(_model(), _data(), cfg, GoesBad(), Watch(run_dir=tmp_path, log=_silent))
    assert read_meta(tmp_path / "checkpoints" / "last")["epoch"] == 1
    with pytest.raises(FewLabelsError, match=r"at epoch 1, step \d+ of .*no weights were saved"):  # a real one
        fit(_model(), _data(), cfg.replace(lr=1e12, warmup_epochs=0), watch=QUIET)


def test_a_warmup_longer_than_half_the_run_is_capped(tmp_path):
    """--epochs 1 with the default one warm-up epoch used to end on the peak rate, never decaying."""
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, warmup_epochs=5, precision="fp32", augment="none",
                      channels_last=False)
    logs: list[str] = []
    res = fit(_model(), _data(), cfg, watch=Watch(log=logs.append))
    assert any("warming up over the first half" in m for m in logs)
    assert res.history[0]["lr"] == pytest.approx(0.1)  # the peak, reached at the end of the first half
    assert res.history[-1]["lr"] < 0.01  # and the cosine decay after it


def test_tta_translate_too_large_is_refused_before_training(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, tta_translate=20, precision="fp32", augment="none")
    started = []
    with pytest.raises(FewLabelsError, match="--tta-translate must be between 0 and 15"):
        fit(_model(), _data(), cfg, watch=QUIET, on_epoch_start=lambda *_: started.append(1))
    assert not started


def test_fit_checks_a_config_built_in_python_as_the_command_line_does():
    """A TrainConfig built in code is checked like flags: out-of-range values and unknown choices are refused before
    training with the option's name, and numbers given as strings are converted."""
    started = []
    for bad, match in ((dict(lr=-1.0), "'lr' .* must be > 0"),
                       (dict(epochs="two"), "'epochs': 'two' is not a valid int"),
                       (dict(augment="heavy"), "'augment': 'heavy' is not one of none, weak, strong")):
        with pytest.raises(FewLabelsError, match=match):
            fit(_model(), _data(), TrainConfig(precision="fp32", **bad), watch=QUIET,
                on_epoch_start=lambda *_: started.append(1))
    assert not started
    res = fit(_model(), _data(), TrainConfig(epochs="1", batch_size="16", lr="0.05", precision="fp32", augment="none"),
              watch=QUIET)
    assert len(res.history) == 1


def test_norm_bias_learning_rate_multiplier():
    """--norm-bias-lr (airbench's bias_scaler) raises only the norm layers' biases, and survives schedule updates."""
    m = create_model("cnn-s", 10, 3)
    names = norm_bias_names(m)
    bn = {n for n, mod in m.named_modules() if isinstance(mod, nn.BatchNorm2d)}
    assert names == {f"{n}.bias" for n in bn} and names
    opt = build_optimizer(m, TrainConfig(lr=0.1, norm_bias_lr=64.0))
    set_lr(opt, 0.1, 0.5)  # what the schedule does every step
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in m.named_parameters():
        assert rate[id(p)] == pytest.approx(0.05 * (64 if n in names else 1)), n
    assert "head.bias" not in names  # a linear layer's bias is not a norm bias
    with pytest.raises(FewLabelsError, match="norm_bias_lr.*must be > 0"):
        build_optimizer(m, TrainConfig(norm_bias_lr=0.0))


def test_accuracy_is_exact_count_over_total():
    """9,000 correct of 10,000 is 0.9 exactly (a float32 mean gives 0.8999999762, which fails a ≥ 0.90 check)."""
    from fewlabels.eval import accuracy

    labels = torch.zeros(10_000, dtype=torch.long)
    logits = torch.zeros(10_000, 2)
    logits[9_000:, 1] = 1.0  # the last 1,000 predict class 1: wrong
    assert accuracy(logits, labels) == 0.9
    assert accuracy(logits[:0], labels[:0]) != accuracy(logits[:0], labels[:0])  # empty: nan


def _sd_distance(a: dict, b: dict) -> float:
    keys = [k for k in a if a[k].is_floating_point() and "running_" not in k]  # weights, not BatchNorm statistics
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in keys) ** 0.5


def test_ema_warms_up_so_a_short_run_does_not_keep_its_starting_weights(tmp_path):
    """With ema=0.999 and ~20 steps, a plain EMA would still be ~98 % the initial weights; with the warm-up it tracks
    the trained weights. The EMA is also part of the saved state: a resumed run ends on the same EMA weights."""
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, ema=0.999, precision="fp32", augment="none",
                      channels_last=False, device="cpu")  # CPU: exact resume (see the lookahead test)
    live = _model()
    init = {k: v.clone() for k, v in live.state_dict().items()}
    res = fit(live, _data(), cfg, watch=QUIET)
    ema_sd, live_sd = res.model.state_dict(), live.state_dict()
    assert res.model is not live
    moved = _sd_distance(live_sd, init)
    assert moved > 0
    assert _sd_distance(ema_sd, live_sd) < 0.5 * _sd_distance(ema_sd, init)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _data(), cfg, watch=Watch(run_dir=run, log=_silent), on_epoch_start=_interrupt_at(2))
    resumed = fit(_model(), _data(), cfg, watch=Watch(run_dir=run, log=_silent)).model
    for (k, a), b in zip(ema_sd.items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_fp16_runs_with_loss_scaling_and_resumes_exactly(tmp_path):
    """fp16 autocast (CUDA GPUs without bf16) trains through a GradScaler, whose state is saved for resuming."""
    from fewlabels.data import load_dataset
    from fewlabels.models import create_model
    from fewlabels.targets import one_hot

    ds = load_dataset("digits")
    n = 192
    data = TrainSet(ds.train.images[:n], one_hot(ds.train.labels[:n], 10), torch.ones(n, dtype=torch.bool),
                    norm=(ds.mean, ds.std))
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, precision="fp16", augment="none", channels_last=False,
                      min_steps_per_epoch=0)

    def model():
        torch.manual_seed(0)
        return create_model("mlp", 10, 1, image_size=16)

    calls = []
    real = torch.amp.GradScaler.step

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    torch.amp.GradScaler.step = counting
    try:
        res = fit(model(), data, cfg, watch=QUIET)
        run = tmp_path / "run"
        with pytest.raises(KeyboardInterrupt):
            fit(model(), data, cfg, watch=Watch(run_dir=run, log=_silent), on_epoch_start=_interrupt_at(2))
        state = torch.load(run / "checkpoints" / "last" / "train_state.pt", weights_only=True)
        assert "scale" in state["scaler"]
        resumed = fit(model(), data, cfg, watch=Watch(run_dir=run, log=_silent)).model
    finally:
        torch.amp.GradScaler.step = real
    assert len(calls) == 3 * 6 + 2 * 6 + 6  # every step of the three runs went through the scaler
    losses = [h["train_loss"] for h in res.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    for (k, a), b in zip(res.model.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_best_is_saved_before_last_and_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    """`last` records the best score, so `best` must be on disk first (a crash in between replays the epoch); a
    checkpoint copied over another (selftrain's final model) leaves the old one readable if the copy fails."""
    import shutil

    from fewlabels.engine import loop
    from fewlabels.engine.checkpoint import copy_checkpoint, find_checkpoint
    from fewlabels.utils import atomic_write_text

    order = []
    real = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda folder, *a, **k: (order.append(folder.name),
                                                                          real(folder, *a, **k)))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, precision="fp32", augment="none", channels_last=False)
    fit(_model(), _data(), cfg, watch=Watch(run_dir=tmp_path / "run", log=_silent))
    assert order == ["best", "last", "best", "last"]

    dst = tmp_path / "dst"
    copy_checkpoint(tmp_path / "run" / "checkpoints" / "last", dst)
    before = (dst / "model.safetensors").read_bytes()

    def broken(src, new, *a, **k):
        Path(new).mkdir()
        (Path(new) / "model.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", broken)
    with pytest.raises(OSError):
        copy_checkpoint(tmp_path / "run" / "checkpoints" / "best", dst)
    assert find_checkpoint(dst) == dst and (dst / "model.safetensors").read_bytes() == before
    # files written atomically get the usual permissions, not mkstemp's 0600
    atomic_write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~os.umask(os.umask(0o022))


def test_cached_teacher_logits_are_a_field_of_their_own_and_mix_with_the_targets():
    """Distillation from cached outputs: the teacher's logits travel as TrainSet.teacher_logits (not packed into the
    targets) and MixUp/CutMix mix them with the same λ as the target rows."""
    from fewlabels.targets import Batch

    data = _data()
    data.teacher_logits = data.targets * 10.0  # a teacher that agrees with the labels
    seen = []

    class Recording:
        def __call__(self, model, x, batch: Batch):
            seen.append(batch)
            return model(x).float().pow(2).mean()

    cfg = TrainConfig(epochs=1, batch_size=16, precision="fp32", augment="none", mixup=1.0, cutmix=1.0)
    fit(_model(), data, cfg, Recording(), QUIET)
    assert seen and all(b.teacher_logits is not None for b in seen)
    mixed = [b for b in seen if not torch.equal(b.targets, b.targets.round())]
    assert mixed, "MixUp/CutMix mixed no batch"
    for b in seen:
        torch.testing.assert_close(b.teacher_logits, b.targets * 10.0)


def test_a_full_disk_mid_checkpoint_is_one_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Issue 28, item 4: ENOSPC while writing a checkpoint gave an obscure traceback."""
    import errno

    from fewlabels.engine import checkpoint as ck
    from fewlabels.engine.checkpoint import read_meta

    real, calls = ck.save_file, []

    def full_disk(state, path):
        calls.append(path)
        if len(calls) > 2:  # epoch 1 wrote best and last; epoch 2 finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(state, path)

    monkeypatch.setattr(ck, "save_file", full_disk)
    cfg = TrainConfig(epochs=3, batch_size=16, min_steps_per_epoch=0, precision="fp32", augment="none",
                      channels_last=False)
    with pytest.raises(FewLabelsError, match=r"could not write the checkpoint .*: No space left on device\. It needs "
                                             r"about \d+ MB free on that disk; the last good one .* is intact"):
        fit(_model(), _data(), cfg, watch=Watch(run_dir=tmp_path, log=_silent))
    last = tmp_path / "checkpoints" / "last"
    assert read_meta(last)["epoch"] == 1 and (last / "model.safetensors").is_file()
    assert not list(tmp_path.glob("checkpoints/*.new"))
    monkeypatch.setattr(ck, "save_file", real)  # space freed: the same call resumes after epoch 1
    res = fit(_model(), _data(), cfg, watch=Watch(run_dir=tmp_path, log=_silent))
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_a_full_disk_for_a_small_file_is_one_message(tmp_path, monkeypatch):
    import errno

    from fewlabels.utils import write_json

    target = tmp_path / "results.json"
    write_json(target, {"old": 1})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(FewLabelsError, match=r"could not write .*results.json: No space left on device .*the old "
                                             r"file is intact"):
        write_json(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1} and not list(tmp_path.glob(".results.json.*"))


def test_predict_logits_batch_size_changes_memory_not_results():
    """The evaluation batch only bounds memory (one batch of activations at a time): the logits are the same image
    for image at the default batch size, a large one and an odd one, in bf16 autocast as in fp32."""
    from fewlabels.eval import EVAL_BATCH_SIZE, predict_logits

    torch.manual_seed(0)
    model = create_model("cnn-tiny", 4).train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model(torch.randn(32, 3, 16, 16))
    images = torch.randint(0, 256, (2 * EVAL_BATCH_SIZE + 37, 3, 16, 16), dtype=torch.uint8)
    norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    for dtype in (None, torch.bfloat16):
        ref = predict_logits(model, images, *norm, dtype=dtype)
        for bs in (1024, 100):
            assert torch.equal(predict_logits(model, images, *norm, batch_size=bs, dtype=dtype), ref)
    assert model.training  # left in the mode it came in


def test_fit_trains_a_linear_head_on_feature_rows():
    """The linear probe's path: float (N, D) rows, no augmentation or normalisation, evaluated on feature sets."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    rows = TrainSet(x[:200], nn.functional.one_hot(y[:200], 3).float(), torch.ones(200, dtype=torch.bool))
    cfg = TrainConfig(epochs=40, batch_size=50, lr=0.05, optimizer="adamw", warmup_epochs=0, precision="fp32",
                      augment="none", channels_last=False, min_steps_per_epoch=0, eval_every=20, device="cpu")
    res = fit(nn.Linear(8, 3), rows, cfg, watch=Watch(evals={"val": FeatureSet(x[200:], y[200:])}, log=lambda *_: None))
    assert [h["epoch"] for h in res.history if "val_acc" in h] == [20, 40]
    assert res.history[-1]["val_acc"] > 0.9 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    with pytest.raises(ValueError, match="feature rows"):
        fit(nn.Linear(8, 3), rows, TrainConfig(epochs=1, augment="weak", device="cpu"), watch=QUIET)
    with pytest.raises(ValueError, match="normalisation"):
        TrainSet(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, 3), torch.ones(4, dtype=torch.bool))


def test_micro_batches_take_the_same_step_as_the_whole_batch():
    """--micro-batch (memory): chunks of the batch, each loss weighted by its share, accumulate the same gradient as
    the whole batch, so a model without BatchNorm ends on the same weights (fp32, no augmentation); a model with
    BatchNorm trains (its statistics are per chunk), and every chunk carries its own rows of targets and teacher
    logits."""
    from fewlabels.targets import Batch

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.GELU(), nn.Linear(32, 4))

    data = _data()
    data.teacher_logits = data.targets * 10.0
    cfg = TrainConfig(epochs=2, batch_size=32, precision="fp32", augment="none", channels_last=False, device="cpu",
                      min_steps_per_epoch=0)
    whole, chunked = mlp(), mlp()
    fit(whole, data, cfg, watch=QUIET)
    fit(chunked, data, cfg.replace(micro_batch=10), watch=QUIET)  # 10 + 10 + 10 + 2: an uneven last chunk
    for a, b in zip(whole.parameters(), chunked.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    sizes = []

    class Recording:
        def __call__(self, model, x, batch: Batch):
            assert x.shape[0] == batch.targets.shape[0] == batch.has_label.shape[0] == batch.teacher_logits.shape[0]
            torch.testing.assert_close(batch.teacher_logits, batch.targets * 10.0)
            sizes.append(x.shape[0])
            return nn.functional.cross_entropy(model(x).float(), batch.targets)

    res = fit(_model(), data, cfg.replace(micro_batch=8, epochs=3), Recording(), QUIET)
    assert set(sizes) == {8} and len(sizes) == 3 * 3 * 4
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    with pytest.raises(FewLabelsError, match="micro"):
        TrainConfig(micro_batch=-1)


def test_by_default_the_cpu_steps_large_images_in_chunks_as_small_as_a_32_px_batch(tmp_path):
    """--micro-batch's default (issue 26 item 9, a laptop's memory): on the CPU, images larger than 32 x 32 go through
    the model in chunks of batch x 1024 / pixels (at least 32); 32 px and smaller, feature rows, a GPU and an explicit
    --micro-batch (0 = whole batches, as a run saved before this default keeps) are left as they are."""
    from fewlabels.engine.config import auto_micro_batch, eval_batch, micro_batch

    assert auto_micro_batch(256, (3, 64, 64), "cpu") == 64 and auto_micro_batch(256, (3, 224, 224), "cpu") == 32
    assert auto_micro_batch(256, (3, 32, 32), "cpu") == 0 and auto_micro_batch(256, (1, 28, 28), "cpu") == 0
    assert auto_micro_batch(256, (3, 64, 64), "cuda") == 0 and auto_micro_batch(256, (512,), "cpu") == 0
    assert auto_micro_batch(48, (3, 64, 64), "cpu") == 32 and auto_micro_batch(32, (3, 64, 64), "cpu") == 0
    cfg = TrainConfig(device="cpu")
    assert micro_batch(cfg, (9, 3, 64, 64)) == 64 and micro_batch(cfg.replace(micro_batch=0), (9, 3, 64, 64)) == 0
    assert eval_batch(cfg, (9, 3, 64, 64)) == 64 and eval_batch(cfg, (9, 3, 32, 32)) == 256
    assert eval_batch({"micro_batch": 0, "device": "cpu"}, (9, 3, 64, 64)) == 256

    g = torch.Generator().manual_seed(1)
    y = torch.arange(80) % 4
    data = TrainSet(torch.randint(0, 256, (80, 3, 64, 64), generator=g, dtype=torch.uint8),
                    nn.functional.one_hot(y, 4).float(), torch.ones(80, dtype=torch.bool),
                    norm=((0.5,) * 3, (0.25,) * 3))
    sizes, lines = [], []

    def loss(model, x, batch):
        sizes.append(x.shape[0])
        return nn.functional.cross_entropy(model(x).float(), batch.targets)

    fit(_model(), data, TrainConfig(epochs=1, batch_size=80, augment="none", device="cpu", min_steps_per_epoch=0),
        loss, Watch(run_dir=tmp_path, log=lines.append))
    assert sizes == [32, 32, 16]  # 80 x 1024 / 4096 = 20, at least 32
    assert any("chunks of 32" in line for line in lines)
    assert read_meta(tmp_path / "checkpoints" / "last")["train_config"]["micro_batch"] == 32  # what the run used


def test_with_micro_batches_no_forward_pass_sees_more_images_than_that():
    """--micro-batch also caps evaluation, pool labelling and the report's batches (a run's saved config too)."""
    from fewlabels.engine.config import eval_batch

    assert eval_batch(TrainConfig()) == 256 and eval_batch(TrainConfig(micro_batch=32)) == 32
    assert eval_batch(TrainConfig(micro_batch=512, eval_batch_size=128)) == 128
    assert eval_batch({"eval_batch_size": 100, "micro_batch": 0}) == 100 and eval_batch({}) == 256


def test_progressive_resize_ramps_the_side_in_steps_of_4_to_full_size():
    from fewlabels.engine.loop import progressive_side

    sides = [progressive_side(e, 12, 32, 20, 0.75) for e in range(12)]
    assert sides == [20, 20, 20, 24, 24, 24, 28, 28, 28, 32, 32, 32]  # full from epoch 0.75 x 12 = 9 on
    assert sorted(sides) == sides and all(s % 4 == 0 for s in sides)
    assert progressive_side(0, 12, 32, None) == 32 and progressive_side(0, 12, 32, 40) == 32  # off / not smaller
    assert [progressive_side(e, 4, 32, 18, 1.0) for e in range(4)] == [18, 20, 24, 28]  # odd start kept, ramp to end


def test_progressive_resize_trains_early_epochs_on_smaller_images_and_evaluates_at_full_size(tmp_path):
    """The model sees the scaled-down batches while the side ramps, full-size batches after, and evaluation at full
    size; each epoch's side is in its history row; a resumed run replays the same sides."""
    from fewlabels.data.imageset import ImageSet

    seen: list[tuple[bool, int]] = []
    model = _model()
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, int(args[0].shape[-1]))))
    small = _data()
    data = TrainSet(small.images.repeat_interleave(3, 2).repeat_interleave(3, 3)[:, :, :24, :24].contiguous(),
                    small.targets, small.has_label, norm=small.norm)  # 24 x 24
    evals = {"val": ImageSet(data.images[:32], data.targets[:32].argmax(1), list("abcd"))}
    cfg = TrainConfig(epochs=4, batch_size=32, min_steps_per_epoch=0, precision="fp32", augment="weak",
                      progressive_resize=12, progressive_end=0.5, device="cpu", channels_last=False)
    res = fit(model, data, cfg, watch=Watch(evals=evals, log=_silent))
    assert [h["side"] for h in res.history] == [12, 16, 24, 24]
    train_sides = [s for training, s in seen if training]
    assert train_sides == [12] * 3 + [16] * 3 + [24] * 6  # 3 steps an epoch
    assert {s for training, s in seen if not training} == {24}
    assert all(math.isfinite(h["val_acc"]) for h in res.history)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), data, cfg, watch=Watch(run_dir=run, log=_silent), on_epoch_start=_interrupt_at(2))
    resumed = fit(_model(), data, cfg, watch=Watch(run_dir=run, log=_silent))
    assert [h["side"] for h in resumed.history] == [12, 16, 24, 24]


@pytest.mark.parametrize("side, features, message", [
    (16, False, r"--progressive-resize 16 \(given, or the recipe's\) is not smaller than the images \(16 x 16\): give "
                r"a smaller side \(e.g. 10\) or --progressive-resize none"),
    (8, True, "--progressive-resize needs images, and this run trains on cached features"),
])
def test_progressive_resize_that_cannot_apply_is_refused_before_training(side, features, message):
    train = (TrainSet(torch.randn(32, 8), nn.functional.one_hot(torch.arange(32) % 4, 4).float(),
                      torch.ones(32, dtype=torch.bool)) if features else _data())
    cfg = TrainConfig(epochs=1, batch_size=16, progressive_resize=side, precision="fp32", augment="none",
                      channels_last=False)
    started = []
    model = nn.Linear(8, 4) if features else _model()
    with pytest.raises(FewLabelsError, match=message):
        fit(model, train, cfg, watch=QUIET,
            on_epoch_start=lambda *_: started.append(1))
    assert not started


def test_self_correcting_loss_moves_only_the_correctable_targets_towards_the_model():
    """SelfCorrecting (SELC): cross-entropy on the targets as given until started; then each correctable row in the
    batch becomes m·t + (1 − m)·softmax(z) before the loss, other rows stay; mixed batches (no index) are refused."""
    from fewlabels.losses import SelfCorrecting, soft_cross_entropy
    from fewlabels.targets import Batch

    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    x, t = torch.randn(4, 5), torch.eye(3)[[0, 1, 2, 0]]
    loss = SelfCorrecting(t, torch.tensor([False, True, True, False]), momentum=0.75)
    idx = torch.tensor([1, 3])
    b = Batch(t[idx], torch.ones(2, dtype=torch.bool), None, idx)
    assert torch.allclose(loss(net, x[idx], b), soft_cross_entropy(net(x[idx]), t[idx]))
    assert torch.equal(loss.table, t)  # not started: nothing corrected
    loss.start()
    z = net(x[idx]).detach()
    got = loss(net, x[idx], b)
    want_row1 = 0.75 * t[1] + 0.25 * torch.softmax(z[0], -1)
    assert torch.allclose(loss.table[1], want_row1) and torch.equal(loss.table[3], t[3])  # row 3 is not correctable
    assert torch.allclose(got, soft_cross_entropy(z, torch.stack([want_row1, t[3]])))
    assert torch.allclose(loss.table.sum(1), torch.ones(4))  # still distributions
    with pytest.raises(ValueError, match="row indices"):
        loss(net, x[idx], Batch(t[idx], torch.ones(2, dtype=torch.bool)))


def test_hard_self_correcting_trains_on_the_top_class_of_the_same_vote():
    """SelfCorrecting(hard=True): the table is updated exactly as the soft one's, but the loss takes each corrected
    row's top class (one-hot); a pseudo-label changes class only once the model's predictions outweigh it."""
    from fewlabels.losses import SelfCorrecting, soft_cross_entropy
    from fewlabels.targets import Batch

    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, 0.0, 4.0]))  # the model says class 2 for every image, confidently
    x, t = torch.randn(4, 5), torch.eye(3)[[0, 1, 2, 0]]
    mutable = torch.tensor([False, True, True, False])
    soft, hard = SelfCorrecting(t, mutable, momentum=0.5), SelfCorrecting(t, mutable, momentum=0.5, hard=True)
    idx = torch.tensor([1, 3])
    b = Batch(t[idx], torch.ones(2, dtype=torch.bool), None, idx)
    soft.start(), hard.start()
    z = net(x[idx]).detach()
    soft(net, x[idx], b)
    got = hard(net, x[idx], b)
    assert torch.allclose(hard.table, soft.table)  # the same vote
    p = torch.softmax(z[0], -1)
    assert float(0.5 * p[2]) < 0.5 + 0.5 * float(p[1])  # one step: class 1 still outweighs the model's class 2
    assert torch.allclose(got, soft_cross_entropy(z, t[idx]))  # so the hard target is still class 1
    for _ in range(3):  # the model keeps saying class 2: its vote now outweighs the teacher's label
        got = hard(net, x[idx], b)
    assert int(hard.table[1].argmax()) == 2
    assert torch.allclose(got, soft_cross_entropy(z, torch.eye(3)[[2, 0]]))  # row 3 (labelled) keeps its target


def test_self_correcting_targets_fix_wrong_labels_and_resume_exactly(tmp_path):
    """Trained through fit() on data whose correctable quarter has wrong labels, the corrected targets move to the
    right class for most of those rows; the table is part of the resume state, so a run interrupted after an epoch
    ends on the same targets and weights as an uninterrupted one."""
    from fewlabels.losses import SelfCorrecting

    n, k = 96, 3
    true = torch.arange(n) % k
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    images[torch.arange(n), true] = 0  # a learnable signal: the class's colour channel is off
    wrong = torch.arange(n) % 4 == 0
    targets = nn.functional.one_hot(torch.where(wrong, (true + 1) % k, true), k).float()
    noisy = TrainSet(images, targets, torch.ones(n, dtype=torch.bool), wrong, norm=((0.5,) * 3, (0.25,) * 3))
    cfg = TrainConfig(epochs=8, batch_size=16, lr=0.02, precision="fp32", augment="none", channels_last=False,
                      device="cpu")

    def run(hook=None, run_dir=None):
        loss = SelfCorrecting(targets, wrong, momentum=0.6)

        def start(model, epoch):
            loss.start(epoch >= 1)  # from the second epoch: later, 96 images are learnt by heart, wrong ones too
            if hook is not None:
                hook(model, epoch)
        torch.manual_seed(0)
        res = fit(create_model("cnn-tiny", k), noisy, cfg, loss, watch=Watch(run_dir=run_dir, log=_silent),
                  on_epoch_start=start)
        return loss, res.model

    whole, model = run()
    fixed = (whole.table[wrong].argmax(1) == true[wrong]).float().mean()
    assert fixed >= 0.6, fixed  # every one of them started on the wrong class
    assert torch.equal(whole.table[~wrong], targets[~wrong])
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(_interrupt_at(4), folder)
    resumed, model2 = run(None, folder)
    assert torch.allclose(resumed.table, whole.table, atol=1e-5)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)

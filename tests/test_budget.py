"""--budget-minutes: epochs sized from speeds measured at the start, the plan kept on resume."""

import json
import math

import pytest

from fewlabels import selftrain, train
from fewlabels.engine.budget import Phase, pace, plan, replan
from fewlabels.errors import FewLabelsError

FAST = {"data": "digits", "device": "cpu", "quiet": True}


def test_plan_scales_every_phase_alike_to_fill_the_budget():
    phases = [Phase("teacher", 40, 1000, 1000.0, eval_images=500, eval_every=1, eval_images_per_s=5000.0,
                    labels_after=2000, label_images_per_s=4000.0),
              Phase("student1", 20, 3000, 1500.0)]
    p = plan(phases, minutes=2.0)
    # one epoch of each: teacher 1 s + 0.1 s eval, student 2 s; labelling 0.5 s fixed
    f = (120 - 0.5) / (40 * 1.1 + 20 * 2.0)
    assert p["factor"] == pytest.approx(f, rel=1e-3)
    assert p["epochs"] == {"teacher": round(40 * f), "student1": round(20 * f)}
    assert p["predicted_minutes"] == pytest.approx(2.0, abs=0.03)


def test_a_budget_too_short_for_one_epoch_is_one_clear_error():
    with pytest.raises(FewLabelsError, match=r"--budget-minutes 0.01 is too short .* Give at least \d+"):
        plan([Phase("train", 10, 60_000, 1000.0)], minutes=0.01)


def test_train_fills_its_budget_and_a_resume_keeps_the_plan(tmp_path):
    out = tmp_path / "run"
    res = train(**FAST, budget_minutes=0.15, out=str(out))
    b = res["budget"]
    saved = json.loads((out / "budget.json").read_text())
    assert b["epochs"] == saved["epochs"] and b["epochs"]["train"] >= 1
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == b["epochs"]["train"]
    # on a shared 2-core machine the measured speed drifts: within a factor of two of the budget
    assert 0.5 * 0.15 <= b["minutes"] <= 2 * 0.15, b
    # the same command again: nothing timed, nothing retrained, the same epochs
    again = train(**FAST, budget_minutes=0.15, out=str(out))
    assert again["budget"]["epochs"] == b["epochs"] and not math.isnan(again["test_acc"])


def test_selftrain_sizes_teacher_and_students_together(tmp_path):
    res = selftrain(**FAST, labels_per_class=5, rounds=1, student_models=["cnn-s"], budget_minutes=0.3,
                    out=str(tmp_path / "st"))
    final = json.loads((tmp_path / "st" / "final.json").read_text())
    e = final["budget"]["epochs"]
    assert set(e) == {"teacher", "student1"}
    (re,) = final["budget"]["replans"]  # the student re-planned once its pseudo-labels were known
    assert re["round"] == 1 and re["epochs"]["student1"] == e["student1"]
    assert e["teacher"] / re["before"]["student1"] == pytest.approx(40 / 20, rel=0.15)  # the recipe's proportion
    assert [r["round"] for r in res["rounds"]] == [0, 1]
    assert 0.5 * 0.3 <= final["budget"]["minutes"] <= 2 * 0.3, final["budget"]
    student = (tmp_path / "st" / "round1" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(student[-1])["epoch"] == e["student1"]


def test_the_plan_never_overshoots_for_whole_epochs_and_evaluations():
    """A 15-minute selftrain plan on the 2-core EPYC predicted 16.2 minutes: the linear factor ignores that epochs
    are whole and that a phase's last epoch is always evaluated. The plan now takes the largest factor that fits,
    and only a budget shorter than one epoch of everything is an error. (The measured speeds of that plan.)"""
    phases = [Phase("teacher", 60, 3840, 1560.4, eval_images=10_000, eval_every=5, eval_images_per_s=856.1,
                    labels_after=46_000, label_images_per_s=850.0),
              Phase("student1", 21, 61_184, 520.9, eval_images=10_000, eval_every=5, eval_images_per_s=289.7),
              Phase("finetune", 10, 3840, 530.7, eval_images=10_000, eval_every=5, eval_images_per_s=295.0)]
    p = plan(phases, minutes=15.0)
    assert p["predicted_minutes"] <= 15.0
    assert p["epochs"]["student1"] >= 5  # still most of the budget: not shrunk to nothing
    longer = plan(phases, minutes=16.5)["epochs"]
    assert all(longer[k] >= v for k, v in p["epochs"].items()) and longer != p["epochs"]
    assert plan(phases, minutes=6.0)["predicted_minutes"] <= 6.0  # what the error for 3 minutes asks for


def test_the_students_are_replanned_for_the_pseudo_labels_that_passed_and_the_minutes_left():
    """The 15-minute CIFAR-10 plan sized the student for all 46,000 pool images (61,184 an epoch); 31,700 passed the
    threshold (42,240 an epoch) and the run used 11.5 of its 15 minutes. Re-planned with the real epoch, the
    student gets the minutes back; a round that ran late takes them from the phases left; never an error."""
    phases = [Phase("teacher", 60, 3840, 1560.4, eval_images=10_000, eval_every=5, eval_images_per_s=856.1,
                    labels_after=46_000, label_images_per_s=850.0),
              Phase("student1", 21, 61_184, 520.9, eval_images=10_000, eval_every=5, eval_images_per_s=289.7),
              Phase("finetune", 10, 3840, 530.7, eval_images=10_000, eval_every=5, eval_images_per_s=295.0)]
    first = plan(phases, minutes=15.0)
    names = ["student1", "finetune"]
    left = 15.0 - 2.5  # the teacher and its labelling took 2.5 minutes
    again = replan(json.loads(json.dumps(first)), names, left, {"student1": 42_240})
    assert again["epochs"]["student1"] > first["epochs"]["student1"]
    assert again["predicted_minutes"] <= left
    assert again["epochs"]["student1"] / again["epochs"]["finetune"] == pytest.approx(21 / 10, rel=0.35)
    late = replan(first, names, 4.0, {"student1": 42_240})
    assert late["epochs"]["student1"] < first["epochs"]["student1"] and late["predicted_minutes"] <= 4.0
    assert replan(first, names, -3.0, {})["epochs"] == {"student1": 1, "finetune": 1}  # spent: one epoch each
    # the teacher's 16 epochs took 91.6 s where the plan said 87: the phases left are planned at that pace
    took = 91.6
    predicted = 16 * 3840 / 1560.4 + 4 * 10_000 / 856.1
    assert first["epochs"]["teacher"] == 16
    assert pace(first, {"teacher": took}) == pytest.approx(took / predicted, rel=1e-3)
    assert pace(first, {"teacher": 1e6}) == 1.5 and pace(first, {}) == 1.0
    slow = replan(first, names, left, {"student1": 42_240}, slowdown=1.3)
    assert slow["epochs"]["student1"] < again["epochs"]["student1"] and slow["predicted_minutes"] <= left
    old = {**first, "phases": [{k: v for k, v in p.items() if k != "eval_images"} for p in first["phases"]]}
    assert replan(old, names, left, {}) is None  # a plan saved before these fields: kept as it was


def test_a_replan_is_saved_and_a_resumed_round_keeps_it(tmp_path):
    from fewlabels.methods.selftrain import _replan

    phases = [Phase("teacher", 60, 3840, 1560.4, eval_images=10_000, eval_every=5, eval_images_per_s=856.1,
                    labels_after=46_000, label_images_per_s=850.0),
              Phase("student1", 21, 61_184, 520.9, eval_images=10_000, eval_every=5, eval_images_per_s=289.7),
              Phase("finetune", 10, 3840, 530.7, eval_images=10_000, eval_every=5, eval_images_per_s=295.0)]
    first = plan(phases, minutes=15.0)
    lines = []
    b = _replan(tmp_path, first, 1, 1, 42_240, [{"round": 0, "minutes": 1.5}], 54.0, lines.append)
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved == b and b["epochs"]["student1"] > first["epochs"]["student1"]
    (re,) = b["replans"]
    assert re["minutes_left"] == pytest.approx(15.0 - 1.5 - 54.0 / 60, abs=0.01)
    assert "round 1 trains on 42240 images an epoch" in lines[0]
    # the same round again (a resumed run): the saved plan, whatever the clocks say now
    assert _replan(tmp_path, saved, 1, 1, 42_240, [{"round": 0, "minutes": 9.0}], 300.0, lines.append) == saved
    assert len(lines) == 1


def test_progressive_resize_is_timed_at_full_size_and_halfway_so_the_budget_buys_more_epochs(monkeypatch):
    """With --progressive-resize the planned speed is the mean over the run's epochs, from two timings through the
    run's own path: full size, and scaled-down batches halfway up the ramp; seconds per image a + b x side² through
    them. A 60-minute CIFAR-10 plan that timed the smallest side on small images (cheaper augmentation) and took the
    cost as proportional to pixels predicted a cnn-m-p2 student 4 % faster than it ran."""
    import torch
    from torch import nn

    from fewlabels.engine import budget as B
    from fewlabels.engine.config import TrainConfig
    from fewlabels.engine.loop import TrainSet

    timed: list[tuple] = []

    def fake(model, train, cfg):
        timed.append((int(train.images.shape[-1]), cfg.progressive_resize, cfg.progressive_end))
        return 100.0 if cfg.progressive_resize is None else 160.0  # images/s at 32 px, and at 24 px

    monkeypatch.setattr(B, "_timed", fake)
    n = 8
    train = TrainSet(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.eye(4)[torch.arange(n) % 4],
                     torch.ones(n, dtype=torch.bool), norm=((0.5,) * 3, (0.25,) * 3))
    cfg = TrainConfig(epochs=8, progressive_resize=16, progressive_end=0.5)
    speed = B.train_speed(nn.Identity(), train, cfg)
    # full-size images each time (the run's path resizes them); the ramp timed twice, the first only warming up
    assert timed == [(32, None, 0.5), (32, 16, 1.0), (32, 16, 1.0)]
    b = (1 / 100 - 1 / 160) / (32 ** 2 - 24 ** 2)
    sides = [16, 20, 24, 28, 32, 32, 32, 32]  # progressive_side over the 8 epochs
    assert speed == pytest.approx(8 / sum(1 / 100 - b * (32 ** 2 - s * s) for s in sides))
    assert speed > 100
    timed.clear()
    assert B.train_speed(nn.Identity(), train, cfg.replace(progressive_resize=None)) == 100.0 and len(timed) == 1


def test_selftrain_progressive_resize_reaches_every_phase_but_the_finetune(tmp_path):
    """The option reaches every phase but the fine-tune, and each epoch records its side."""
    out = tmp_path / "st"
    selftrain(**FAST, labels_per_class=5, rounds=1, student_models=["cnn-s"], teacher_epochs=3, student_epochs=3,
              finetune_epochs=2, image_size=16, progressive_resize=8, progressive_end=1.0, out=str(out))
    sides = {d: [json.loads(x).get("side") for x in (out / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("round0", "round1", "finetune")}
    assert sides == {"round0": [8, 8, 12], "round1": [8, 8, 12], "finetune": [None, None]}

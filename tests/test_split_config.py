import pytest
import torch

from fewlabels.config import resolve
from fewlabels.data.split import Split, make_split
from fewlabels.errors import FewLabelsError
from fewlabels.losses import kd_loss, soft_cross_entropy
from fewlabels.methods.supervised import TrainCommand
from fewlabels.targets import one_hot as smooth_one_hot


def _labels(n_per=30, k=5):
    return torch.arange(k).repeat_interleave(n_per)


def test_split_stratified_disjoint_and_seeded():
    y = _labels()
    s = make_split(y, 5, labels_per_class=4, val=10, seed=3)
    assert len(s.labelled) == 20 and len(s.val) == 10 and len(s.unlabelled) == 150 - 30
    assert torch.bincount(y[s.labelled], minlength=5).tolist() == [4] * 5
    assert torch.bincount(y[s.val], minlength=5).tolist() == [2] * 5
    allidx = torch.cat([s.labelled, s.val, s.unlabelled])
    assert allidx.unique().numel() == 150
    s2 = make_split(y, 5, labels_per_class=4, val=10, seed=3)
    assert torch.equal(s.labelled, s2.labelled) and torch.equal(s.val, s2.val)
    s3 = make_split(y, 5, labels_per_class=4, val=10, seed=4)
    assert not torch.equal(s.labelled, s3.labelled)


def test_split_total_budget_and_roundtrip(tmp_path):
    y = torch.cat([torch.zeros(100), torch.ones(20), torch.full((10,), 2)]).long()
    s = make_split(y, 3, labels_total=13, val=0.0, seed=0)
    counts = torch.bincount(y[s.labelled], minlength=3).tolist()
    assert sum(counts) == 13 and min(counts) >= 1 and counts[0] > counts[1] > counts[2] - 1
    s.save(tmp_path / "split.json")
    r = Split.load(tmp_path)
    assert torch.equal(r.labelled, s.labelled) and r.pool_size == 130
    with pytest.raises(FewLabelsError, match="pool of 130"):
        Split.load(tmp_path, pool_size=99)


@pytest.mark.parametrize("kw,msg", [({"labels_total": 10_000}, "larger than the training pool"),
                                    ({"labels_total": 3}, "smaller than the number of classes"),
                                    ({"labels_per_class": 40}, "more than some classes have"),
                                    ({"labels_per_class": 0}, "at least 1")])
def test_split_bad_budgets(kw, msg):
    with pytest.raises(FewLabelsError, match=msg):
        make_split(_labels(), 5, val=0, **kw)


def test_config_yaml_flags_and_unknown_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 7\nlr: 0.05\nmodel: cnn-m\n")
    cfg = resolve(TrainCommand, y, {"lr": "0.2"})
    assert cfg.epochs == 7 and cfg.lr == 0.2 and cfg.model == "cnn-m" and cfg.batch_size == 256
    y.write_text("epoch: 7\n")
    with pytest.raises(FewLabelsError, match="unknown config key 'epoch'.*epochs"):
        resolve(TrainCommand, y)
    y.write_text("epochs: many\n")
    with pytest.raises(FewLabelsError, match="'epochs'.*not a valid int"):
        resolve(TrainCommand, y)
    with pytest.raises(FewLabelsError, match="optimizer.*not one of"):
        resolve(TrainCommand, None, {"optimizer": "lbfgs"})


def test_losses_against_reference():
    torch.manual_seed(0)
    z, t = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    # one-hot soft CE == torch's CE; smoothed == torch's label_smoothing
    assert torch.allclose(soft_cross_entropy(z, smooth_one_hot(y, 5)), torch.nn.functional.cross_entropy(z, y))
    assert torch.allclose(soft_cross_entropy(z, smooth_one_hot(y, 5, 0.1)),
                          torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1), atol=1e-6)
    # KD: T^2 * sum p_t (log p_t - log p_s), mean over the batch, written out by hand
    for temp in (1.0, 4.0):
        pt = (t / temp).softmax(1)
        ref = (pt * (pt.log() - (z / temp).log_softmax(1))).sum(1).mean() * temp**2
        assert torch.allclose(kd_loss(z, t, temp), ref, atol=1e-6)


@pytest.mark.skipif(
    __import__("platform").system() != "Linux" or __import__("platform").libc_ver()[0] != "glibc",
    reason="the allocator tuning is glibc-only",
)
def test_cpu_allocator_tuning_switch():
    """tune_cpu_allocator applies glibc's mallopt once per process, and FEWLABELS_MALLOC_TUNING=0 turns it off
    (each case in a fresh process: the setting is process-wide)."""
    import os
    import subprocess
    import sys

    code = ("from fewlabels.utils import tune_cpu_allocator, environment_info; "
            "a = tune_cpu_allocator(); print(a, tune_cpu_allocator() == a, environment_info()['malloc_tuned'])")
    for env_value, expect in (("1", "True True True"), ("0", "False True False")):
        env = {**os.environ, "FEWLABELS_MALLOC_TUNING": env_value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split("\n")[-2].strip() == expect


@pytest.mark.parametrize("cmd, key, value, msg", [
    (TrainCommand, "epochs", "-1", "'epochs' .*must be ≥ 1, got -1"),
    (TrainCommand, "batch_size", 0, "must be ≥ 1"),
    (TrainCommand, "lr", "-1", "'lr' .*must be > 0"),
    (TrainCommand, "lr", "nan", "'lr' .*must be a finite number"),
    (TrainCommand, "ema", 1.5, "'ema' .*must be ≥ 0 and < 1"),
    (TrainCommand, "mix_prob", 2, "≤ 1"),
    (TrainCommand, "std", "0.5,0", "'std' .*> 0, got 0"),
])
def test_config_bounds(cmd, key, value, msg):
    with pytest.raises(FewLabelsError, match=msg):
        resolve(cmd, None, {key: value})


def test_every_default_is_within_its_bounds():
    """The bounds hold for every command's defaults (and a subclass that overrides a default keeps its bound)."""
    from fewlabels.commands import COMMANDS
    from fewlabels.config import _check_bounds

    for cmd in COMMANDS:
        for d in cmd.cls.options.values():
            _check_bounds(d.name, d.default, d.bounds)
    from fewlabels.methods.pseudolabel import PseudoLabelCommand
    from fewlabels.methods.selftrain import SelfTrainCommand

    with pytest.raises(FewLabelsError, match="threshold"):
        resolve(PseudoLabelCommand, None, {"threshold": 1.5})
    with pytest.raises(FewLabelsError, match="teacher_epochs"):
        resolve(SelfTrainCommand, None, {"teacher_epochs": 0})


def test_list_options_and_lazy_api_names():
    import fewlabels
    from fewlabels.augment.randaugment import RandAugment
    from fewlabels.methods.probes import ProbeEquivarianceCommand

    assert resolve(TrainCommand, None, {"std": 0.25, "mean": 1}).std == [0.25]  # YAML `std: 0.25`, as --std 0.25
    assert resolve(TrainCommand, None, {"mean": 1}).mean == [1.0]
    with pytest.raises(FewLabelsError, match="not a valid list of int"):
        resolve(ProbeEquivarianceCommand, None, {"shifts": "a,b"})
    assert RandAugment(ops="Rotate, Equalize").ops == ("Rotate", "Equalize")  # a comma-separated string, as a flag
    assert {"train", "selftrain", "load_model", "TrainCommand", "SelfTrainCommand"} <= set(dir(fewlabels))
    from fewlabels.methods.selftrain import SelfTrainCommand
    assert fewlabels.SelfTrainCommand is SelfTrainCommand


# Each built-in recipe is the option set of a measured benchmark run; the README quotes that run's accuracy for it.
RECIPE_EVIDENCE = {("selftrain", "cifar-cpu"): "selftrain_cifar10_4000",
                   ("selftrain", "cifar-gpu"): "selftrain_cifar10_4000_h200_sTl35",
                   ("train", "cifar-cpu"): "cifar10_supervised"}
# what the user brings (data, label budget, seeds, output, where it runs) rather than the method's settings
USER_OPTIONS = {"data", "data_root", "cache_dir", "bad_images", "labels", "labels_per_class", "split", "split_seed",
                "seed", "out", "quiet", "device", "eval_batch_size", "micro_batch", "image_size", "mean", "std",
                "unlabelled",
                "teacher", "teacher_pretrained", "student_pretrained", "test", "allow_overlap", "verbose", "sync_bn",
                "budget_minutes",
                "tensorboard"}


def _command_classes():
    from fewlabels.commands import COMMANDS

    return {c.name: c.cls for c in COMMANDS}


def test_every_recipe_is_the_option_set_of_a_measured_run():
    import json
    from pathlib import Path

    from fewlabels.config import RECIPES, declarations, recipe, recipes

    classes = _command_classes()
    commands = {d.name.replace("_", " ") for d in RECIPES.iterdir() if d.is_dir()}  # augment_preview/: two words
    found = {(c, n) for c in commands for n in recipes(c)}
    assert found == set(RECIPE_EVIDENCE), "a new recipe needs its benchmark run in RECIPE_EVIDENCE"
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    for (command, name), run in RECIPE_EVIDENCE.items():
        cls = classes[command]
        opts = json.loads((results / f"{run}.json").read_text())["options"]
        # options the command does not offer were at their defaults in the measured run (unused there too)
        defaults = {d.name: d.default for g in cls.groups for d in declarations(g)}
        unused_there = {k: v for k, v in opts.items() if k in defaults and k not in cls.options}
        assert all(v == defaults[k] for k, v in unused_there.items()), unused_there
        measured = resolve(cls, overrides={k: v for k, v in opts.items()
                                           if k not in USER_OPTIONS and k in cls.options})
        from_recipe = resolve(cls, recipe_options=recipe(command, name), recipe_name=name)
        # every other option is written out, so that a default changed later does not change the recipe
        unused = {"epochs", "augment"} if command == "selftrain" else set()  # selftrain sets these per round
        missing = set(measured.options) - USER_OPTIONS - unused - set(
            recipe(command, name))
        assert not missing, f"recipe {command}/{name} leaves {sorted(missing)} to the defaults"
        ignore = set(USER_OPTIONS)
        if command == "selftrain":
            # the benchmark passes 0; the recipe keeps the command's default (10 batches), which only acts when the
            # labelled images fill fewer than 10 batches: not so for the measured run's 4,000 labels
            assert opts["labels_per_class"] * 10 / opts["batch_size"] >= from_recipe.min_steps_per_epoch
            ignore.add("min_steps_per_epoch")
        diff = {f: (getattr(measured, f), getattr(from_recipe, f)) for f in measured.options
                if f not in ignore and getattr(measured, f) != getattr(from_recipe, f)}
        assert not diff, f"recipe {command}/{name} differs from the run {run}: {diff}"


def test_recipe_from_the_command_line_and_python(tmp_path, monkeypatch):
    import argparse

    import fewlabels
    from fewlabels.cli import build_parser
    from fewlabels.config import from_args

    parser = build_parser()
    cls = _command_classes()["selftrain"]

    def cfg(*argv):
        ns = parser.parse_args(["selftrain", *argv])
        return from_args(cls, ns, "selftrain")

    c = cfg("--recipe", "cifar-cpu", "--student-epochs", "5")
    assert (c.student_models, c.threshold, c.unlabelled_ratio, c.student_epochs) == (["cnn-m-p2"], 0.8, 3.0, 5)
    assert {"student_models", "student_epochs", "threshold"} <= c.given  # a resumed run keeps them
    y = tmp_path / "mine.yaml"
    y.write_text("threshold: 0.9\n")
    assert cfg("--recipe", "cifar-gpu", "--config", str(y)).threshold == 0.9  # the user's file overrides the recipe
    with pytest.raises(SystemExit):  # argparse names the valid recipes
        parser.parse_args(["selftrain", "--recipe", "imagenet"])
    assert isinstance(parser.parse_args(["evaluate"]), argparse.Namespace)  # no recipes: no flag
    kw = fewlabels.recipe("selftrain", "cifar-cpu")
    assert kw["teacher_model"] == "cnn-s-p2" and fewlabels.recipes("selftrain") == ["cifar-cpu", "cifar-gpu"]
    kw = fewlabels.recipe("selftrain", "cifar-cpu", student_epochs=30, data="digits")
    assert kw["student_epochs"] == 30 and kw["data"] == "digits" and kw["student_models"] == ["cnn-m-p2"]
    with pytest.raises(FewLabelsError, match="no recipe 'cifar' for `fewlabels selftrain`; its recipes: cifar-cpu"):
        fewlabels.recipe("selftrain", "cifar")
    with pytest.raises(FewLabelsError, match="no recipe 'x' for `fewlabels evaluate`; it has no built-in recipes"):
        fewlabels.recipe("evaluate", "x")


def test_a_recipe_setting_another_flag_switches_off_is_not_refused(tmp_path):
    """`--recipe cifar-cpu --label-correction 0` (or `--teacher RUN`) switches off what the recipe set with it
    (--label-correction-targets, the teacher's model and epochs): that is no error; the same options typed by the
    user still are, and so is one a --config file sets."""
    from fewlabels.cli import build_parser
    from fewlabels.config import from_args
    from fewlabels.methods.pseudolabel import check_label_options
    from fewlabels.methods.selftrain import selftrain

    parser = build_parser()
    cls = _command_classes()["selftrain"]

    def cfg(*argv):
        return from_args(cls, parser.parse_args(["selftrain", *argv]), "selftrain")

    def check(c):
        check_label_options(c, (("label_correction_targets", "label_correction", c.label_correction > 0),))

    off = cfg("--recipe", "cifar-cpu", "--label-correction", "0")
    assert off.label_correction_targets == "hard" and "label_correction_targets" in off.from_recipe
    assert "label_correction" not in off.from_recipe and off.set_by_user(["label_correction_targets"])
    check(off)  # the recipe's hard targets stay unused, and are not refused
    y = tmp_path / "mine.yaml"
    y.write_text("label-correction-targets: hard\n")
    for typed in (cfg("--recipe", "cifar-cpu", "--label-correction", "0", "--label-correction-targets", "hard"),
                  cfg("--recipe", "cifar-cpu", "--label-correction", "0", "--config", str(y))):
        with pytest.raises(FewLabelsError, match="--label-correction-targets only applies with --label-correction"):
            check(typed)
    kept = off.update({"threshold": 0.9}).replace(seed=3)
    assert kept.from_recipe == off.from_recipe - {"threshold"}
    with pytest.raises(FewLabelsError, match="no model at") as e:  # not "would not be used"
        selftrain(cfg("--recipe", "cifar-cpu", "--data", "digits", "--teacher", str(tmp_path / "none"), "--out",
                      str(tmp_path / "run")))
    assert "would not be used" not in str(e.value)
    with pytest.raises(FewLabelsError, match="--teacher-epochs would not be used"):
        selftrain(cfg("--recipe", "cifar-cpu", "--data", "digits", "--teacher", str(tmp_path / "none"),
                      "--teacher-epochs", "5", "--out", str(tmp_path / "run")))


@pytest.mark.parametrize("change, match", [
    (dict(labelled=[0, 1, 99]), "labelled index 99 is outside the training pool of 20"),
    (dict(val=[-1]), "val index -1 is outside"),
    (dict(labelled=[0, 1, 1]), "labelled lists an image more than once"),
    (dict(val=[0]), "1 image\\(s\\) are both labelled and val \\(e.g. index 0\\)"),
    (dict(unlabelled=[1, 5]), "both labelled and unlabelled"),
])
def test_a_damaged_split_file_is_refused_with_what_is_wrong(tmp_path, change, match):
    """split.json is not trusted (issue 28, item 7): ranges, repeats and overlaps are checked when it is loaded."""
    import json

    from fewlabels.data import Split

    good = {"seed": 0, "pool_size": 20, "labelled": [0, 1, 2], "val": [3], "unlabelled": list(range(4, 20))}
    (tmp_path / "ok.json").write_text(json.dumps(good))
    assert Split.load(tmp_path / "ok.json").pool_size == 20
    (tmp_path / "s.json").write_text(json.dumps({**good, **change}))
    with pytest.raises(FewLabelsError, match=match):
        Split.load(tmp_path / "s.json")

"""The option machinery: each option declared once, commands hold only the groups they use, configs never change,
and resuming is a pure function of (saved config, new options)."""

from __future__ import annotations

import collections
import dataclasses
import re

import pytest

from fewlabels.cli import build_parser, main
from fewlabels.commands import COMMANDS
from fewlabels.config import GROUPS, Options, declarations, resolve
from fewlabels.errors import FewLabelsError
from fewlabels.runs import resume

CONFIGS = {c.name: c.cls for c in COMMANDS}  # imports every command module, so every group is declared


def test_every_option_is_declared_once():
    where = collections.defaultdict(list)
    for g in GROUPS:
        for d in declarations(g):
            where[d.name].append(f"{g.__module__}.{g.__name__}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert not twice, f"options declared more than once: {twice}"
    for name, cls in CONFIGS.items():
        assert issubclass(cls, Options) and not dataclasses.is_dataclass(cls), name  # composed, not inherited
        assert all(g in GROUPS for g in cls.groups), name
    build_parser()  # argparse refuses a flag added twice to one command


def test_commands_offer_only_the_options_they_use(capsys, tmp_path):
    assert {"epochs", "augment"}.isdisjoint(CONFIGS["selftrain"].options)  # set per round
    assert {"teacher_epochs", "student_epochs", "unlabelled"} <= set(CONFIGS["selftrain"].options)
    assert {"labels", "labels_per_class", "mean", "std", "epochs"}.isdisjoint(CONFIGS["evaluate"].options)
    assert main(["selftrain", "--epochs", "3"]) == 2
    assert capsys.readouterr().err.strip() == ("fewlabels: error: selftrain does not use --epochs (its options: "
                                               "fewlabels selftrain --help)")
    assert main(["train", "--epoch", "3", "--out", str(tmp_path / "x")]) == 2  # no abbreviations
    assert "train has no option --epoch; did you mean --epochs" in capsys.readouterr().err
    with pytest.raises(FewLabelsError, match="'epochs' .*is not used by SelfTrainCommand"):
        CONFIGS["selftrain"](epochs=3)


def test_help_shows_each_default_once():
    parser = build_parser()
    for c in COMMANDS:
        sub = parser._subparsers._group_actions[0].choices[c.name.split()[0]]
        if " " in c.name:
            sub = sub._subparsers._group_actions[0].choices[c.name.split()[1]]
        for action in sub._actions:
            assert len(re.findall(r"\(default", action.help or "")) <= 1, (c.name, action.dest, action.help)
            assert "default: None" not in (action.help or ""), (c.name, action.dest)


def test_renamed_options_name_the_new_one(capsys, tmp_path):
    with pytest.raises(FewLabelsError, match=r"'batch_size' \(--batch-size\) is now 'eval_batch_size'"):
        CONFIGS["suggest"](batch_size=64)
    assert main(["augment", "preview", "--preset", "weak", "--out", str(tmp_path / "p.png")]) == 2
    assert "is now 'augment' (--augment)" in capsys.readouterr().err
    assert main(["probe", "equivariance", "--model", "runs/x"]) == 2
    assert "is now 'model_path'" in capsys.readouterr().err


def test_a_config_never_changes_and_records_what_the_user_set():
    cfg = CONFIGS["train"](epochs="5", lr=0.05)
    assert (cfg.epochs, cfg.lr, cfg.given) == (5, 0.05, {"epochs", "lr"})
    with pytest.raises(AttributeError, match="does not change"):
        cfg.epochs = 6
    other = cfg.replace(epochs=7)
    assert (cfg.epochs, other.epochs, other.given) == (5, 7, cfg.given)  # the program's change is not the user's
    assert cfg.update({"batch_size": 64}).given == {"epochs", "lr", "batch_size"}
    with pytest.raises(FewLabelsError, match="must be ≥ 1"):
        cfg.replace(epochs=0)


def test_an_old_config_yaml_with_options_a_command_no_longer_offers(tmp_path):
    """A saved selftrain config.yaml of an earlier version lists epochs and augment at their defaults: still read.
    Set to something else they would be silently ignored, so they are refused."""
    y = tmp_path / "config.yaml"
    y.write_text("epochs: 30\naugment: weak\nrounds: 1\n")
    assert resolve(CONFIGS["selftrain"], y).rounds == 1
    y.write_text("epochs: 5\n")
    with pytest.raises(FewLabelsError, match="config key 'epochs' in .*is not used by SelfTrainCommand"):
        resolve(CONFIGS["selftrain"], y)


def _saved(cls, **values):
    return cls(**values).asdict()


def test_resume_is_a_pure_function_of_the_saved_and_the_new_options():
    ST = CONFIGS["selftrain"]
    saved = _saved(ST, rounds=1, student_epochs=15, threshold=0.5, device="cpu")
    # the same options: nothing changes
    same = ST(rounds=1, student_epochs=15, threshold=0.5, device="cpu")
    assert resume(saved, "selftrain", same, "selftrain").asdict() == saved
    # a conflicting option the user gives: refused, naming each one
    with pytest.raises(FewLabelsError, match=r"--student-epochs 15 → 16, --threshold 0.5 → 0.9"):
        resume(saved, "selftrain", ST(student_epochs=16, threshold=0.9), "selftrain")
    # options left out take the run's own values (a default that changed since the run started)
    r = resume(saved, "selftrain", ST(), "selftrain")
    assert (r.student_epochs, r.threshold, r.rounds) == (15, 0.5, 1)  # rounds: not extended by the default of 2
    # how far a run goes may be extended when given; where it runs and what it prints follow the new command
    r = resume(saved, "selftrain", ST(rounds=3, device="auto", quiet=True), "selftrain")
    assert (r.rounds, r.device, r.quiet, r.student_epochs) == (3, "auto", True, 15)
    with pytest.raises(FewLabelsError, match="holds a `fewlabels selftrain` run; `fewlabels train` will not"):
        resume(saved, "selftrain", CONFIGS["train"](), "train")
    with pytest.raises(FewLabelsError, match="cannot be read"):
        resume(None, "selftrain", ST(), "selftrain")


@pytest.mark.parametrize("argv", [["train", "--lr", "inf"], ["train", "--mean", "nan"], ["train", "--std", "0.2,inf"],
                                  ["train", "--weight-decay", "inf"], ["train", "--mixup", "inf"],
                                  ["train", "--warmup-epochs", "inf"], ["selftrain", "--threshold", "nan"],
                                  ["distill", "--temperature", "inf"]])
def test_non_finite_numbers_are_refused_naming_the_flag(argv, capsys, tmp_path):
    """NaN and ±inf parse as floats; they would train to chance (or overflow) with exit 0 (issue 28, item 5)."""
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fewlabels: error:") and f"({argv[1]}) must be a finite number" in err, err
    assert not (tmp_path / "r").exists()


def test_yaml_files_that_are_not_utf8_or_repeat_a_key(tmp_path):
    """Issue 28, item 9: a non-UTF-8 file gave a UnicodeDecodeError traceback; a repeated key was last-wins."""
    y = tmp_path / "c.yaml"
    y.write_bytes("epochs: 5\nmodel: caf\xe9\n".encode("latin-1"))
    with pytest.raises(FewLabelsError, match="is not UTF-8 text .*save it as UTF-8"):
        resolve(CONFIGS["train"], y)
    y.write_text("epochs: 5\nlr: 0.1\nepochs: 7\n")
    with pytest.raises(FewLabelsError, match=r"'epochs' is given twice \(lines 1 and 3\): keep one"):
        resolve(CONFIGS["train"], y)
    y.write_bytes("\ufeffepochs: 5\n".encode())  # a byte-order mark, as some editors write
    assert resolve(CONFIGS["train"], y).epochs == 5


def test_a_timm_name_without_its_prefix_is_called_unknown_and_shown_the_prefix(capsys, tmp_path):
    """Issue 28, item 9b: `--model resnet18 --pretrained true` said "no built-in pretrained weights: pass
    pretrained=..."; resnet18 is not a fewlabels model at all, and the command line names flags."""
    assert main(["train", "--model", "resnet18", "--pretrained", "true", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet18'" in err and "timm:resnet18" in err and "pretrained='" not in err
    assert main(["train", "--model", "cnn-tiny", "--pretrained", "true", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "no built-in pretrained weights" in err and "--pretrained PATH" in err

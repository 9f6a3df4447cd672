"""Benchmarks are fewlabels commands: every command line a benchmark script would run (and record in its results
JSON) must be one that `fewlabels` accepts, so that it can be pasted as it is. Fast: nothing is trained, nothing of
../shared is read."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script → argument lists to plan with (the defaults, the smoke run, and a pass-through example)
SCRIPTS = {
    "cifar10_supervised": [[], ["--smoke"], ["--results-name", "x", "--", "--epochs", "19"]],
    "selftrain_cifar10": [[], ["--smoke"], ["--", "--labels-per-class", "25", "--min-steps-per-epoch", "10"],
                          ["--", "--recipe", "cifar-gpu"]],
    "distill_cifar10": [[], ["--smoke"], ["--students", "cnn-tiny", "--seeds", "0", "--", "--epochs", "30"]],
    "transfer_cifar10": [[], ["--smoke"], ["--budgets", "250", "--", "--epochs", "40"], ["--mode", "probe"]],
    "fixmatch_cifar10": [[], ["--smoke"], ["--", "--labels-per-class", "25"]],
    "selftrain_user_pool": [[], ["--smoke"], ["--per-class", "10", "--", "--batch-size", "128"],
                            ["--defaults", "--only", "selftrain_scratch,selftrain_pretrained"]],
    "active_cifar10": [[], ["--smoke"], ["--seeds", "0", "--", "--epochs", "30"],
                       ["--seeds", "2", "--merge", "x.json"]],
    "augment_cifar10_4000": [[], ["--smoke"], ["--presets", "weak", "--", "--epochs", "120"]],
    "probes_mnist": [[], ["--smoke"], ["--", "--epochs", "8"]],
    "selftrain_ablation": [[], ["--smoke"], ["--only", "0,2", "--", "--student-epochs", "12"]],
    "calibration_cifar10": [[], ["--smoke"], ["--scarce"], ["--smoke", "--scarce"],
                            ["--val", "0.1", "--", "--epochs", "10"]],
}


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def parse():
    """`fewlabels ARGS` parsed (and, where the CLI exposes it, resolved into the command's options: recipe, types and
    ranges checked) as the command line would; raises on a command `fewlabels` would refuse."""
    from fewlabels import cli, config

    parser = cli.build_parser()

    def _parse(cmd: list[str]):
        assert cmd[0] == "fewlabels", cmd
        try:
            ns = parser.parse_args(cmd[1:])
        except SystemExit:
            pytest.fail(f"`{shlex.join(cmd)}` does not parse as a fewlabels command")
        c = getattr(ns, "_cmd", None)
        if c is not None and hasattr(config, "from_args"):
            config.from_args(c.cls, ns, c.name)  # a bad value or an unknown recipe raises FewLabelsError
        return ns

    return _parse


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_commands_are_fewlabels_commands(script, parse):
    mod = _load(script)
    for argv in SCRIPTS[script]:
        cmds = mod.planned_commands(argv, data="/tmp/cifar10")
        assert cmds, (script, argv)
        for cmd in cmds:
            assert all(isinstance(a, str) for a in cmd), cmd
            parse(cmd)


def test_the_headline_runs_use_their_recipe(parse):
    """The two results the issue names are the built-in recipes, with only the data, budget and output added."""
    sup = _load("cifar10_supervised").planned_commands([], data="/tmp/cifar10")[0]
    assert sup == ["fewlabels", "train", "--recipe", "cifar-cpu", "--data", "/tmp/cifar10", "--out",
                   "runs/bench-cifar10-supervised"]
    st = _load("selftrain_cifar10").planned_commands([], data="/tmp/cifar10")[0]
    assert st == ["fewlabels", "selftrain", "--recipe", "cifar-cpu", "--data", "/tmp/cifar10", "--labels-per-class",
                  "400", "--out", "runs/bench-selftrain_cifar10_4000"]
    ns = parse(st)
    assert ns.labels_per_class == "400" and ns.recipe == "cifar-cpu"


def test_shown_commands_paste_back():
    """The line recorded in a results file splits back into the arguments that ran (paths under ~ as ~/...)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    from _common import flag_value, shown, split_passthrough

    home = str(Path.home())
    args = ["train", "--data", f"{home}/data dir/cifar10", "--out", str(ROOT / "runs" / "x"), "--mean", "0.5,0.5,0.5"]
    line = shown(args)
    assert line.startswith("fewlabels train ") and "~/" in line and str(ROOT) not in line
    back = shlex.split(line.replace("~/", home + "/"))
    assert back == ["fewlabels", "train", "--data", f"{home}/data dir/cifar10", "--out", "runs/x", "--mean",
                    "0.5,0.5,0.5"]
    assert split_passthrough(["--smoke", "--", "--epochs", "3"]) == (["--smoke"], ["--epochs", "3"])
    assert flag_value(["--epochs", "3", "--epochs=5"], "--epochs") == "5"


def test_gpu_sweep_configs_are_valid_selftrain_commands(parse):
    """Each line of benchmarks/sweeps/*.txt (options of `fewlabels selftrain --recipe cifar-cpu`, run by
    gpu_selftrain_sweep.sh through selftrain_cifar10.py) must make a command fewlabels accepts, naming real models:
    a typo there would otherwise surface only on a lent GPU, whose minutes are few."""
    from fewlabels.models import list_models

    bench = _load("selftrain_cifar10")
    lines = [ln.split(None, 1) for f in sorted((BENCH / "sweeps").glob("*.txt"))
             for ln in f.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines, "no sweep configurations found"
    known = set(list_models())
    for name, args in lines:
        (cmd,) = bench.planned_commands(["--results-name", f"selftrain_cifar10_4000_{name}", "--",
                                         *shlex.split(args)], data="/tmp/cifar10")
        ns = parse(cmd)
        assert {ns.teacher_model, *ns.student_models.split(",")} <= known, name


def test_user_pool_defaults_run_selftrain_as_a_user_types_it():
    """Issue 26 item 10: `--defaults` measures the command's own defaults, so no round, model or epoch flag."""
    cmds = _load("selftrain_user_pool").planned_commands(["--defaults", "--only", "selftrain_scratch,"
                                                          "selftrain_pretrained"], data="/tmp/cifar10")
    assert [c[1] for c in cmds] == ["train", "selftrain", "selftrain"]  # the source model, then the two selftrains
    for c in cmds[1:]:
        assert not {"--rounds", "--teacher-epochs", "--student-epochs", "--student-models", "--teacher-model"} & set(c)


def test_the_readme_is_short_and_its_commands_are_ones_that_run(parse):
    """Issue 27 item 7: a README read in five minutes (≤ 150 lines, ≤ 10 headline results), and every command it
    shows is one that `fewlabels` (or the benchmark script named) accepts as it is written."""
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "README.md is over 150 lines: move details to benchmarks/RESULTS.md"
    head = text.split("## Headline results", 1)[1]
    assert 1 <= len(re.findall(r"^\d+\. \*\*", head, re.M)) <= 10
    shown = re.findall(r"`((?:fewlabels|python3? benchmarks/)[^`]*)`", head)
    blocks = "\n".join(re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S))
    shown += [ln.split("  #")[0].strip() for ln in re.findall(r"^fewlabels .*$", blocks, re.M)]
    assert len(shown) > 15
    for code in shown:
        args = shlex.split(code.replace("~/", str(Path.home()) + "/"))
        if args[0] == "fewlabels":
            if args[1:2] != ["--help"]:
                parse(args)
        else:
            assert (ROOT / args[1]).is_file(), code
            assert _load(Path(args[1]).stem).planned_commands(args[2:], data="/tmp/cifar10"), code


def test_model_speed_writes_under_its_results_name(tmp_path, monkeypatch):
    """Timing a few models under another name must not overwrite the committed all-models table."""
    mod = _load("model_speed")
    import _common  # importable once _load has put benchmarks/ on sys.path

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["model_speed.py", "--models", "cnn-tiny", "--min-time", "0", "--min-steps", "1",
                                      "--batch-size", "8", "--results-name", "model_speed_few"])
    mod.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_speed_few.json", "model_speed_few.md"]
    assert "cnn-tiny" in (tmp_path / "model_speed_few.md").read_text()


NAMED = sorted(p.stem for p in BENCH.glob("[!_]*.py") if '"--results-name"' in p.read_text())


@pytest.mark.parametrize("script", NAMED)
def test_a_bad_results_name_stops_the_benchmark_before_it_runs(script, monkeypatch, capsys):
    """--results-name names benchmarks/results/NAME.{json,md}: a path ('../x', 'a/b') is refused as the command line
    is read (exit 2, naming the option), not after an hour of training when the results are written."""
    mod = _load(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--results-name", "../outside"])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--results-name" in err and "not a plain name" in err


def test_results_names(tmp_path, monkeypatch):
    _load("model_speed")
    import _common

    assert len(NAMED) >= 12
    for good in ("selftrain_cifar10_4000_prog60_xeon_t08", "model_speed_p2", "a.b-c"):
        assert _common.results_name(good) == good
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    for bad in ("", "../x", "a/b", "/tmp/x", ".hidden", "x..y", "a b"):
        with pytest.raises(Exception, match="not a plain name"):
            _common.results_name(bad)
        with pytest.raises(Exception, match="not a plain name"):  # a name built in code is checked too
            _common.write_results(bad, {}, "")
    assert not tmp_path.exists() or not any(tmp_path.rglob("*"))

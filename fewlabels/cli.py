"""The `fewlabels` command: subcommands map to plain functions of the Python API.

Options come from typed dataclasses (their help text is the `--help`), merged as defaults ← `--recipe NAME` ←
`--config FILE.yaml` ← flags. Errors a user can cause print one line, `fewlabels: error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import config as C
from .errors import FewLabelsError


@dataclass
class Command:
    name: str
    cls: type
    fn: Callable
    help: str
    positionals: tuple[tuple[str, str, str], ...] = ()  # (field, nargs, help)
    show: Callable | None = None


def _commands() -> list[Command]:
    from .methods import supervised as S

    cmds = [
        Command("train", S.TrainCommand, S.train, "train a classifier on the labelled images"),
        Command("evaluate", S.EvaluateCommand, S.evaluate, "accuracy, per-class accuracy and confusion matrix",
                (("model_path", "?", "run folder or checkpoint"),), _show_eval),
        Command("predict", S.PredictCommand, S.predict, "top-k classes of image files (CSV or JSON)",
                (("model_path", "?", "run folder or checkpoint"), ("inputs", "*", "image files or folders"))),
    ]
    from .methods.registry import extra_commands
    return cmds + extra_commands(Command)


def _show_eval(report: dict) -> None:
    print(f"accuracy {report['accuracy']:.4f} on {report['n']} {report['on']} images")
    per_class = report.get("per_class")
    num = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731  NaN (no images) or JSON's null
    if per_class:  # precision/recall/F1 tell a rare class's misses apart from the large classes' (recall = accuracy)
        cw = max(16, *(len(c) for c in per_class))
        print(f"  {'class':>{cw}s}  precision  recall      f1  support")
        for c, m in per_class.items():
            print(f"  {c:>{cw}s}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}")
        print(f"macro-F1 {num(report.get('macro_f1'))} (classes weigh the same)")
        print(f"balanced accuracy {num(report.get('balanced_accuracy'))} (mean recall over the classes)")
    else:  # a report written before per-class precision/recall
        for c, a in report["per_class_accuracy"].items():
            print(f"  {c:>16s}  {a:.4f}")
    cm, classes = report.get("confusion_matrix"), report.get("classes", [])
    if not cm:
        return
    if len(classes) > 20:
        print(f"confusion matrix ({len(classes)} classes): in the JSON report (--out report.json)")
        return
    w = max(4, *(len(str(v)) for row in cm for v in row)) + 1
    # columns are named by class when every name fits the column, else by number (the rows say which is which)
    numbered = any(len(c) > w - 1 for c in classes)
    heads = [str(i) if numbered else c for i, c in enumerate(classes)]
    rows = [f"{c} ({i})" if numbered else c for i, c in enumerate(classes)]
    rw = max(16, *(len(r) for r in rows))
    print("confusion matrix (rows: true class, columns: predicted" + (" class number)" if numbered else ")"))
    print(" " * (rw + 2) + "".join(f"{n:>{w}s}" for n in heads))
    for r, row in zip(rows, cm):
        print(f"  {r:>{rw}s}" + "".join(f"{v:>{w}d}" for v in row))


def build_parser(cmds: list[Command]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewlabels", description="Train accurate image classifiers when labels are "
                                "scarce.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"fewlabels {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for c in cmds:
        target, name = sub, c.name
        if " " in c.name:  # a two-word command such as "probe equivariance"
            group, name = c.name.split(" ", 1)
            if group not in groups:
                gp = sub.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest=f"{group}_command", required=True, metavar="COMMAND")
            target = groups[group]
        sp = target.add_parser(name, help=c.help, description=(c.cls.__doc__ or c.help).strip())
        sp.add_argument("--config", help="YAML file of options (flags override it)")
        if C.recipes(c.name):
            sp.add_argument("--recipe", choices=C.recipes(c.name),
                            help="a built-in, measured set of options (fewlabels/recipes/; the --config file and flags "
                                 "override it)")
        for name, nargs, help_ in c.positionals:
            sp.add_argument(f"_pos_{name}", nargs=nargs, help=help_, default=None, metavar=name.upper())
        C.add_arguments(sp, c.cls)
        sp.set_defaults(_cmd=c)
    return p


def main(argv: list[str] | None = None) -> int:
    cmds = _commands()
    args = build_parser(cmds).parse_args(argv)
    cmd: Command = args._cmd
    for name, _, _ in cmd.positionals:
        v = getattr(args, f"_pos_{name}")
        if v not in (None, []) and getattr(args, name, None) is None:
            setattr(args, name, v)
    try:
        cfg = C.from_args(cmd.cls, args, cmd.name)
        result = cmd.fn(cfg)
        if cmd.show is not None:
            cmd.show(result)
    except FewLabelsError as e:
        print(f"fewlabels: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fewlabels: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (`| head`): not an error of ours
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    return 0


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


if __name__ == "__main__":
    sys.exit(main())

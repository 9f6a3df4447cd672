"""The `fewlabels` command: subcommands map to plain functions of the Python API.

The commands are the rows of `fewlabels.commands.COMMANDS`; each one's flags are the options its config holds
(fewlabels.config), merged as defaults ← `--recipe NAME` ← `--config FILE.yaml` ← flags. Errors a user can cause
print one line, `fewlabels: error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import typing

from . import config as C
from .commands import COMMANDS, Command
from .errors import FewLabelsError


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line, `fewlabels: error: ...` (exit 2), instead of the usage and then the error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"fewlabels: error: {self.prog.removeprefix('fewlabels ')}: {message} (see {self.prog} --help)\n")


def build_parser(cmds: tuple[Command, ...] = COMMANDS) -> argparse.ArgumentParser:
    p = _Parser(prog="fewlabels", description="Train accurate image classifiers when labels are scarce.")
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
        cls = c.cls
        # no abbreviated flags: --epoch must not quietly mean --epochs
        sp = target.add_parser(name, help=c.help, description=(cls.__doc__ or c.help).strip(), allow_abbrev=False)
        sp.add_argument("--config", help="YAML file of options (flags override it)")
        if C.recipes(c.name):
            sp.add_argument("--recipe", choices=C.recipes(c.name),
                            help="a built-in, measured set of options (fewlabels/recipes/; the --config file and flags "
                                 "override it)")
        for name, nargs, help_ in c.positionals:
            sp.add_argument(f"_pos_{name}", nargs=nargs, help=help_, default=None, metavar=name.upper())
        C.add_arguments(sp, cls)
        sp.set_defaults(_cmd=c)
    return p


def main(argv: list[str] | None = None) -> int:
    from . import utils

    argv = sys.argv[1:] if argv is None else list(argv)
    utils.COMMAND_LINE[:] = argv  # recorded in a run's environment.json, to be pasted again
    try:
        return _main(argv)
    finally:  # a later Python call in this process is not this command
        utils.COMMAND_LINE.clear()


def _main(argv: list[str]) -> int:
    args, extra = build_parser().parse_known_args(argv)
    cmd: Command = args._cmd
    if extra:
        print(f"fewlabels: error: {_unknown(cmd, extra)}", file=sys.stderr)
        return 2
    for name, _, _ in cmd.positionals:
        v = getattr(args, f"_pos_{name}")
        if v not in (None, []) and getattr(args, name, None) is None:
            setattr(args, name, v)
    try:
        cfg = C.from_args(cmd.cls, args, cmd.name)
        result = cmd.fn(cfg)
        if cmd.show is not None:
            cmd.load(cmd.show)(result)
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


def _unknown(cmd: Command, extra: list[str]) -> str:
    """One line for the first argument a command does not take."""
    flag = next((a for a in extra if a.startswith("--")), extra[0])
    name = flag.removeprefix("--").split("=", 1)[0].replace("-", "_")
    cls = cmd.cls
    if name in cls.renamed or (name in cls._owner and name not in cls.options):
        try:
            cls.option(name)
        except FewLabelsError as e:
            if name in cls.renamed:
                return str(e)
        return f"{cmd.name} does not use {flag} (its options: fewlabels {cmd.name} --help)"
    if not flag.startswith("--"):
        return f"{cmd.name} takes no argument {flag!r} here (see fewlabels {cmd.name} --help)"
    import difflib
    close = difflib.get_close_matches(name, list(cls.options), n=2)
    hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
    return f"{cmd.name} has no option {flag}{hint} (see fewlabels {cmd.name} --help)"


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


if __name__ == "__main__":
    sys.exit(main())

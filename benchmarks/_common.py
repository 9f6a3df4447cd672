"""Shared benchmark helpers: running `fewlabels` commands, what machine a number came from, and writing
results/NAME.json + NAME.md.

A benchmark is a set of `fewlabels` commands: it builds their command lines, runs them (`run_fewlabels`), times them
and tabulates what they wrote into their run folders. Every result file records the exact `fewlabels ...` command
line of each figure, pasteable as it is ("command" for a single run, "runs": [{"command": ...}] for several), the
benchmark invocation that ran them ("benchmark"), the UTC date, the machine (CPU model, cores, load, torch version
and threads, GPU if any), and the git commit ("uncommitted" before the first commit), so a number can be traced
back to how it was produced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)


def git_commit() -> str:
    """HEAD's SHA, with "+dirty" when the tree has changes; "uncommitted" when there is no commit yet."""
    try:
        sha = _git("rev-parse", "HEAD")
        if sha.returncode != 0 or not sha.stdout.strip():
            return "uncommitted"
        return sha.stdout.strip() + ("+dirty" if _git("status", "--porcelain").stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "uncommitted"


def machine_info() -> dict[str, Any]:
    """CPU model, core count, load average, Python/torch versions and threads, and the GPU if there is one."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _portable(obj: Any) -> Any:
    """Paths in results as a reader can use them: the home folder as ~, the repository as ."""
    if isinstance(obj, dict):
        return {k: _portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_portable(v) for v in obj]
    if isinstance(obj, Path):
        obj = str(obj)
    if isinstance(obj, str):
        repo = str(RESULTS.parents[1])
        return obj.replace(repo + "/", "").replace(repo, ".").replace(str(Path.home()), "~")
    return obj


def benchmark_invocation() -> str:
    """How this benchmark script was called, e.g. `python benchmarks/cifar10_supervised.py --smoke`."""
    return " ".join([Path(sys.executable).name, *(shlex.quote(a) for a in sys.argv)])


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def results_name(value: str) -> str:
    """The argparse type of every benchmark's --results-name: a plain file name for results/NAME.{json,md}, checked
    when the command line is read, so a bad one stops the benchmark before it runs rather than after."""
    if not _NAME.fullmatch(value) or ".." in value:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a plain name: use letters, digits, '.', '_' and '-' (it names "
            f"benchmarks/results/NAME.json and NAME.md), e.g. selftrain_cifar10_4000_mine")
    return value


def write_results(name: str, data: dict[str, Any], table_md: str) -> tuple[Path, Path]:
    """Write results/NAME.json (data + metadata) and results/NAME.md (a metadata header + table_md).

    `data` names the `fewlabels` command line(s) behind its figures: "command" (one run) or "runs", a list of
    {"command": ..., ...}. A benchmark that measures library internals rather than commands (throughput, allocator)
    gives neither: its own invocation is then its "command". A "git_commit" in `data` (taken when the run started)
    wins over the one at writing time. Absolute paths in data are written relative to the repository or the home
    folder (see _portable)."""
    results_name(name)  # a name built in code is checked as one given on the command line
    data = _portable(data)
    table_md = _portable(table_md)
    meta: dict[str, Any] = {"benchmark": _portable(benchmark_invocation())}
    if "command" not in data and "runs" not in data:
        meta["command"] = meta["benchmark"]
    meta.update({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": data.get("machine") or machine_info(),
        "git_commit": data.get("git_commit") or git_commit(),
    })
    out = {**data, **meta}
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    m = meta["machine"]
    command = out.get("command")
    header = (
        f"# {name}\n\n"
        + (f"- command: `{command}`\n" if command and command != meta["benchmark"] else "")
        + f"- benchmark: `{meta['benchmark']}`\n"
        f"- date: {meta['date']}\n"
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
        f"{m.get('torch_threads')} threads{', ' + m['gpu'] if m.get('gpu') else ''}"
        + (f", load average (1/5/15 min) {m['load_average_1_5_15']} at the end" if m.get("load_average_1_5_15")
           else "") + "\n"
        f"- git commit: {meta['git_commit']}\n\n"
    )
    runs = [r for r in out.get("runs", []) if isinstance(r, dict) and r.get("command")]
    commands = ""
    if runs:
        commands = "\n\n## Commands\n\nEach figure above comes from these `fewlabels` commands, run in this order " \
                   "from the repository's root:\n\n```\n" + "\n".join(r["command"] for r in runs) + "\n```\n"
    md_path.write_text(header + table_md.rstrip() + "\n" + commands)
    return json_path, md_path


# ---------------------------------------------------------------------------------------------------------------
# fewlabels commands

def split_passthrough(argv: list[str] | None = None) -> tuple[list[str], list[str]]:
    """A benchmark's own arguments and the `fewlabels` options after `--`, passed through verbatim, e.g.
    `selftrain_cifar10.py --results-name x -- --student-epochs 6` → (["--results-name", "x"],
    ["--student-epochs", "6"])."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def flag_value(args: list[str], flag: str, default: Any = None) -> Any:
    """The value of `flag` in a command line (the last one wins, as in argparse): `--flag V` or `--flag=V`."""
    value = default
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _shown_arg(a: Any) -> str:
    """One argument as a shell reads it back: quoted where needed, paths under the home folder as ~/..., paths under
    the repository relative to it (commands run from the repository's root), the shared folder as ../shared."""
    s = str(a)
    repo, home = str(REPO), str(Path.home())
    shared = str(Path(os.environ.get("FEWLABELS_SHARED", REPO.parent / "shared")).resolve())
    if s == shared or s.startswith(shared + "/"):  # the project's shared folder, ../shared beside the repository
        s = "../shared" + s[len(shared):]
    elif s == repo or s.startswith(repo + "/"):
        s = s[len(repo) + 1:] or "."
    elif s == home or s.startswith(home + "/"):
        rest = s[len(home) + 1:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(s)


def shown(args: list[Any]) -> str:
    """`fewlabels ARGS` as one pasteable line."""
    return " ".join(["fewlabels", *(_shown_arg(a) for a in args)])


def run_fewlabels(args: list[Any], log: Path | None = None, check: bool = True) -> dict[str, Any]:
    """Run `fewlabels ARGS` as a user would, with this interpreter and this repository's package, its output shown
    (and appended to `log` when given). Returns {"command": the pasteable line, "minutes": wall minutes of the
    whole command (start-up, data loading and evaluation included), "returncode"}; exits on a failure when `check`."""
    args = [str(a) for a in args]
    line = shown(args)
    print(f"$ {line}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-m", "fewlabels", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, bufsize=1) as proc:
        f = log.open("a") if log is not None else None
        try:
            if f is not None:
                f.write(f"$ {line}\n")
            assert proc.stdout is not None
            for out_line in proc.stdout:
                sys.stdout.write(out_line)
                sys.stdout.flush()
                if f is not None:
                    f.write(out_line)
        finally:
            if f is not None:
                f.close()
    minutes = (time.perf_counter() - t0) / 60
    if check and proc.returncode != 0:
        from fewlabels.errors import FewLabelsError

        where = f"; see {log}" if log is not None else ""
        raise FewLabelsError(f"`{line}` failed (exit {proc.returncode}){where}")
    return {"command": line, "minutes": minutes, "returncode": proc.returncode}


def run_options(run_dir: Path) -> dict[str, Any]:
    """The options a run resolved to: its config.yaml (every option of the command, flags, recipe and defaults)."""
    import yaml

    return yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}


def started() -> dict[str, Any]:
    """What to record at a benchmark's start: the git commit (the code that ran, even if the tree changes later) and
    the load average, since the cores may be shared with other work."""
    info: dict[str, Any] = {"git_commit": git_commit()}
    try:
        info["load_average_at_start_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def previous(name: str, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """The earlier result under results/NAME.json (its `keys`, command, benchmark, date, machine, commit and its own
    "previous"), to keep beside a re-measurement: a new figure does not silently replace the old one."""
    p = RESULTS / f"{name}.json"
    if not p.is_file():
        return None
    old = json.loads(p.read_text())
    if old.get("smoke"):
        return None
    keep = (*keys, "command", "benchmark", "date", "machine", "git_commit", "note", "note_run", "previous")
    return {k: old[k] for k in keep if k in old}


def run_main(main: Callable[[], Any]) -> None:
    """Run a benchmark's ``main()`` as the CLI runs a command: a user error (missing ``../shared`` data, a bad option)
    prints its message alone and exits with status 2; an interrupt exits with 130 and no traceback."""
    from fewlabels.errors import FewLabelsError

    try:
        main()
    except FewLabelsError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

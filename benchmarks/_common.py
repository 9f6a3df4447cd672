"""Shared benchmark helpers: what machine a number came from, and writing results/NAME.json + NAME.md.

Every result file records the exact command, the UTC date, the machine (CPU model, cores, torch version and
threads, GPU if any), and the git commit ("uncommitted" before the first commit), so a number can be traced
back to how it was produced.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
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


def write_results(name: str, data: dict[str, Any], table_md: str) -> tuple[Path, Path]:
    """Write results/NAME.json (data + metadata) and results/NAME.md (a metadata header + table_md).

    Absolute paths in data are written relative to the repository or the home folder (see _portable)."""
    data = _portable(data)
    table_md = _portable(table_md)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": data.get("machine") or machine_info(),
        "git_commit": git_commit(),
    }
    out = {**data, **meta}
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    m = meta["machine"]
    header = (
        f"# {name}\n\n"
        f"- command: `{meta['command']}`\n"
        f"- date: {meta['date']}\n"
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
        f"{m.get('torch_threads')} threads{', ' + m['gpu'] if m.get('gpu') else ''}\n"
        f"- git commit: {meta['git_commit']}\n\n"
    )
    md_path.write_text(header + table_md.rstrip() + "\n")
    return json_path, md_path


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

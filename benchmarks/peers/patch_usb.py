"""Apply the CPU patches of PATCHES.md to the semilearn installed in the running Python (USB's own venv).

Run by setup_usb.sh with benchmarks/peers/.venv-usb/bin/python. Each patch is an exact text replacement in one file
of the installed package; a file already patched is left alone (idempotent), and a file whose text is not what
semilearn 0.3.2 ships stops the script with a message rather than being patched blindly. Nothing here changes an
algorithm's maths: on a machine with CUDA every patched line does exactly what it did before.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARK = "# fewlabels-peers: CPU patch (benchmarks/peers/PATCHES.md)"
CUDA_OR_CPU = "({x}.cuda(self.gpu) if torch.cuda.is_available() else {x})"

# (file under semilearn/, [(old, new, count)]): old must occur exactly `count` times in the unpatched file
PATCHES: list[tuple[str, list[tuple[str, str, int]]]] = [
    # 1. AlgorithmBase.process_batch and .evaluate move every batch to the GPU with .cuda(self.gpu)
    ("core/algorithmbase.py", [
        ("var = {k: v.cuda(self.gpu) for k, v in var.items()}",
         "var = {k: " + CUDA_OR_CPU.format(x="v") + " for k, v in var.items()}  " + MARK, 1),
        ("var = var.cuda(self.gpu)", "var = " + CUDA_OR_CPU.format(x="var") + "  " + MARK, 1),
        ("x = {k: v.cuda(self.gpu) for k, v in x.items()}",
         "x = {k: " + CUDA_OR_CPU.format(x="v") + " for k, v in x.items()}  " + MARK, 1),
        ("x = x.cuda(self.gpu)", "x = " + CUDA_OR_CPU.format(x="x") + "  " + MARK, 1),
        ("y = y.cuda(self.gpu)", "y = " + CUDA_OR_CPU.format(x="y") + "  " + MARK, 1),
    ]),
    # 2. TimerHook times batches with torch.cuda.Event: on CPU, an event with the same two methods on perf_counter
    ("core/hooks/timer.py", [
        ("from .hook import Hook\n",
         "from .hook import Hook\n\n\n" + MARK + "\n"
         "class _CpuEvent:\n"
         "    def __init__(self, enable_timing=True):\n"
         "        import time\n"
         "        self._clock, self.t = time.perf_counter, None\n\n"
         "    def record(self):\n"
         "        self.t = self._clock()\n\n"
         "    def elapsed_time(self, end):  # milliseconds, as torch.cuda.Event.elapsed_time\n"
         "        return (end.t - self.t) * 1000.0\n\n\n"
         "def _event(enable_timing=True):\n"
         "    return torch.cuda.Event(enable_timing=enable_timing) if torch.cuda.is_available() else "
         "_CpuEvent(enable_timing)\n", 1),
        ("torch.cuda.Event(enable_timing=True)", "_event(enable_timing=True)", 4),
    ]),
    # 3. ParamUpdateHook waits for the GPU (torch.cuda.synchronize) around each step: only where there is one
    ("core/hooks/param_update.py", [
        ("torch.cuda.synchronize()", "torch.cuda.is_available() and torch.cuda.synchronize()  " + MARK, 2),
    ]),
]


def semilearn_dir() -> Path:
    spec = importlib.util.find_spec("semilearn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("semilearn is not installed in this Python: run benchmarks/peers/setup_usb.sh")
    return Path(next(iter(spec.submodule_search_locations)))


def apply(root: Path) -> list[str]:
    done = []
    for rel, edits in PATCHES:
        path = root / rel
        text = path.read_text()
        if MARK in text:
            done.append(f"{rel}: already patched")
            continue
        for old, new, count in edits:
            found = text.count(old)
            if found != count:
                sys.exit(f"{path}: expected {count} x {old!r}, found {found}: not the semilearn 0.3.2 this patch "
                         "was written for; see benchmarks/peers/PATCHES.md")
            text = text.replace(old, new)
        path.write_text(text)
        for pyc in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            pyc.unlink()
        done.append(f"{rel}: patched ({sum(c for _, _, c in edits)} places)")
    return done


if __name__ == "__main__":
    for line in apply(semilearn_dir()):
        print("semilearn/" + line)

"""What a command prints, and how often.

Three levels, from the Run options every command has:
    --quiet      nothing but errors (the Python API returns the result; the CLI's `show` functions still print it)
    (default)    a progress bar per phase on a terminal (decoding, each epoch, pseudo-labelling: images/s and ETA,
                 tqdm on stderr), and at most one epoch line every EPOCH_LINE_EVERY_S seconds plus each phase's last
                 epoch, so a run's whole output fits on a screen
    -v/--verbose every epoch's line, as fewlabels printed before

Off a terminal (CI, a log file) tqdm's bars are off and the output stays plain lines. A Console is a callable
`log(message)`, so code that takes a plain `print` keeps working; fit() asks it through `epoch()` whether an epoch's
line is due.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

EPOCH_LINE_EVERY_S = 30.0


class Console:
    def __init__(self, quiet: bool = False, verbose: bool = False, every_s: float = EPOCH_LINE_EVERY_S) -> None:
        self.quiet, self.verbose, self.every_s = quiet, verbose, every_s
        self._last = time.monotonic()

    @classmethod
    def of(cls, cfg: Any) -> Console:
        """The console a command's options ask for (`quiet`, `verbose`; both off when the command has neither). Under
        torchrun only rank 0 prints."""
        quiet = bool(getattr(cfg, "quiet", False)) or int(os.environ.get("RANK", "0")) != 0
        return cls(quiet=quiet, verbose=bool(getattr(cfg, "verbose", False)))

    def __call__(self, message: str = "") -> None:
        if not self.quiet:
            print(message, flush=True)

    def epoch(self, line: str, last: bool) -> None:
        """An epoch's line: every one with --verbose, else the phase's last and at most one per `every_s` seconds."""
        now = time.monotonic()
        if self.verbose or last or now - self._last >= self.every_s:
            self._last = now
            self(line)

    @property
    def bars(self) -> bool:
        """Whether progress bars are drawn: on a terminal, unless --quiet."""
        return not self.quiet and sys.stderr.isatty()


def silent(*_: Any) -> None:
    """A log that prints nothing."""

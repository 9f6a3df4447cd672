"""`fewlabels report RUN`: one self-contained HTML page of a run folder (methods/report_page.py), the page every
training command also writes as RUN/report.html when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Options, group, opt
from ..engine.config import Device
from ..errors import FewLabelsError
from ..runs import output_file, run_of
from .common import Run


@group
class ReportOf:
    """The run a report is made of."""

    run: str = opt("", "run folder of a train, transfer, distill, pseudolabel or selftrain run (or a checkpoint or "
                       "round folder inside it)")


class ReportCommand(Options):
    """Write one self-contained HTML page of a run (opens from disk, no network): its options, learning curves,
    per-class precision/recall/F1, confusion matrix, reliability diagram, the most confidently wrong test images and,
    for pseudolabel and selftrain, the pseudo-labelled images per class; for distill, teacher vs student; for
    transfer --mode compare, the comparison. Written to RUN/report.html unless --out names another file."""

    groups = (ReportOf, Device, Run)


def html_report(cfg: ReportCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """The HTML report of a run folder; returns {"report": the file written, "run_dir"}. E.g.
    `html_report(run="runs/digits")` writes runs/digits/report.html (`out="report.html"` writes there instead)."""
    from .report_page import write_report

    cfg = ReportCommand.build(cfg, kwargs)
    log = (lambda *_: None) if cfg.quiet else print
    if not cfg.run:
        raise FewLabelsError("report needs a run folder: `fewlabels report RUN` (the --out of a training command)")
    given = Path(cfg.run).expanduser()
    if not given.exists():
        raise FewLabelsError(f"no run folder at {given}: pass the folder a training command wrote (its --out)")
    run = run_of(given, "config.yaml")
    if run is None:
        raise FewLabelsError(f"{given} is not a fewlabels run folder (it has no config.yaml): pass the folder a "
                             f"training command wrote (its --out)")
    own = run / "report.html"
    out = own
    if cfg.out:
        out = Path(cfg.out).expanduser()
        if out.absolute() != own.absolute():  # the run's own report is this command's to replace
            out = output_file(out, cfg.overwrite, (".html", ".htm"))
    path = write_report(run, out, device=cfg.device)
    log(f"report: {path}")
    return {"report": str(path), "run_dir": str(run)}

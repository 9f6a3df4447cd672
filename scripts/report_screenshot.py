"""The README's picture of the HTML run report: docs/report.png, the top of a digits selftrain run's report.html
as headless Chromium shows it (tests/chromium.py drives the browser).

    .venv/bin/python scripts/report_screenshot.py [RUN] [--out docs/report.png]

Without RUN it first runs the demo's self-training (scripts/demo.sh's options) into a temporary folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", help="a finished selftrain run folder (default: run one)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    ap.add_argument("--width", type=int, default=900)
    ap.add_argument("--height", type=int, default=2000, help="keep the top this many pixels of the page")
    a = ap.parse_args()
    from chromium import Chromium, find_chromium
    from PIL import Image

    import fewlabels

    exe = find_chromium()
    if exe is None:
        print("no Chromium: apt-get install chromium (or bash scripts/setup.sh --dev)", file=sys.stderr)
        return 1
    run = Path(a.run) if a.run else Path(tempfile.mkdtemp(prefix="fl-shot-")) / "demo-digits"
    if not a.run:
        fewlabels.selftrain(data="digits", labels_per_class=5, student_models=["cnn-s", "cnn-s"], student_epochs=12,
                            out=str(run))
    page = Path(fewlabels.html_report(run=str(run), quiet=True)["report"])
    b = Chromium(exe)
    try:
        b.open(page.absolute().as_uri(), width=a.width)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        b.screenshot(out, a.width, a.height)
    finally:
        b.close()
    img = Image.open(out).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)  # a smaller PNG
    img.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

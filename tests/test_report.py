"""The HTML run report: `fewlabels report RUN`, RUN/report.html at the end of every run, what it holds, what it does
when parts are missing, and the page in a real browser (headless Chromium over the DevTools protocol)."""

import json
import os
import re
import shutil

import pytest

from fewlabels import distill, html_report, pseudolabel, selftrain, train, transfer
from fewlabels.cli import main
from fewlabels.errors import FewLabelsError

FAST = {"data": "digits", "quiet": True, "device": "cpu", "batch_size": 64, "min_steps_per_epoch": 2}
CORE = ["Summary", "Learning curves", "Per-class precision, recall and F1", "Confusion matrix",
        "Calibration: reliability diagram", "Most confidently wrong", "Options", "Environment"]


def headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def notes(page: str) -> list[str]:
    return re.findall(r'<p class="note">(.*?)</p>', page)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    train(out=str(root / "train"), model="cnn-tiny", labels_per_class=5, epochs=2, **FAST)
    selftrain(out=str(root / "selftrain"), teacher_model="cnn-tiny", student_models=["cnn-tiny"], teacher_epochs=2,
              student_epochs=1, rounds=1, labels_per_class=5, **FAST)
    return root


def test_every_run_ends_with_its_report(runs):
    page = (runs / "train" / "report.html").read_text()
    assert headings(page) == CORE and not notes(page)
    assert '<meta name="viewport"' in page and 'alt="confusion matrix"' in page
    # self-contained: every image a data URI, no link, script or font from elsewhere
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', page))
    assert not re.search(r"(href|src)=\"(https?:)?//|<script|<link|@import|url\(", page)
    st = (runs / "selftrain" / "report.html").read_text()
    assert headings(st) == CORE[:2] + ["Rounds"] + CORE[2:6] + ["Pseudo-labels"] + CORE[6:]
    assert "round 1" in st and "precision" in st and "threshold 0.00" in st


def test_report_command(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    res = html_report(run=str(runs / "selftrain" / "round1"), out=str(out))  # a folder inside the run: the run
    assert res["run_dir"] == str(runs / "selftrain") and out.is_file()
    assert main(["report", str(runs / "train"), "--out", str(out)]) == 2
    assert "exists already: pass --overwrite" in capsys.readouterr().err
    assert main(["report", str(runs / "train"), "--out", str(out), "--overwrite"]) == 0
    assert main(["report", str(runs / "train")]) == 0  # the run's own report.html is this command's to replace
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {runs / 'train' / 'report.html'}"
    for bad, msg in ((runs / "train" / "results.json", "is a file of the run folder"), (tmp_path / "r.txt", ".html")):
        with pytest.raises(FewLabelsError, match=msg):
            html_report(run=str(runs / "train"), out=str(bad))
    with pytest.raises(FewLabelsError, match="not a fewlabels run folder"):
        html_report(run=str(tmp_path))
    with pytest.raises(FewLabelsError, match="needs a run folder"):
        html_report()


def test_missing_parts_leave_their_section_out_with_a_note(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "train", old)
    (old / "split.json").unlink()  # the images cannot be rebuilt: the wrong-images grid goes
    res = json.loads((old / "results.json").read_text())
    del res["report"]["reliability"]  # a report written before calibration
    (old / "results.json").write_text(json.dumps(res))
    (old / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.0, "val_acc": 0.5}\n{"epoch": 2, "tra')  # cut
    html_report(run=str(old))
    page = (old / "report.html").read_text()
    assert headings(page) == CORE
    assert len(notes(page)) == 2 and "no split.json" in page and "no calibration figures" in page
    (old / "results.json").unlink()
    (old / "checkpoints" / "best" / "model.safetensors").unlink()
    html_report(run=str(old))
    assert headings((old / "report.html").read_text()) == CORE


def test_a_report_that_fails_never_fails_the_run(tmp_path, monkeypatch, capsys):
    import fewlabels.methods.report_page as page

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(page, "build_report", boom)
    res = train(out=str(tmp_path / "r"), model="cnn-tiny", labels_per_class=2, epochs=1, **{**FAST, "quiet": False})
    assert res["test_accuracy"] >= 0 and not (tmp_path / "r" / "report.html").exists()
    assert "warning: the run's report was not written (RuntimeError: disk on fire)" in capsys.readouterr().out


def test_distill_pseudolabel_and_transfer_compare_sections(runs, tmp_path):
    teacher = str(runs / "train")
    pseudolabel(teacher=teacher, out=str(tmp_path / "pl"), threshold=0.0, data="digits", quiet=True, device="cpu")
    assert headings((tmp_path / "pl" / "report.html").read_text()) == ["Summary", "Learning curves", "Pseudo-labels",
                                                                       "Options", "Environment"]
    distill(teacher=teacher, out=str(tmp_path / "d"), model="cnn-tiny", epochs=1, **FAST)
    d = (tmp_path / "d" / "report.html").read_text()
    assert "Teacher vs student" in headings(d) and "FLOPs per image" in d
    transfer(mode="compare", pretrained=teacher, out=str(tmp_path / "t"), model="cnn-tiny", epochs=1, probe_epochs=2,
             allow_overlap=True, labels_per_class=5, **FAST)
    t = (tmp_path / "t" / "report.html").read_text()
    assert "Transfer comparison: scratch vs probe vs fine-tune" in headings(t) and not notes(t)


def _browser():
    from chromium import Chromium, find_chromium

    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Chromium for the browser test: scripts/setup.sh installs it (apt-get install "
                        "chromium)")
        pytest.skip("no Chromium here (apt-get install chromium, or FEWLABELS_CHROMIUM=/path/to/chrome)")
    return Chromium(exe)


@pytest.mark.parametrize("width", [1000, 400])  # a desktop window and a phone
def test_the_report_in_a_real_browser(runs, tmp_path, width):
    page = runs / "selftrain" / "report.html"
    b = _browser()
    try:
        b.open(page.as_uri(), width=width)
        assert b.errors() == []
        other = [u for u in b.requests() if not u.startswith(("file://", "data:"))]
        assert other == [], other
        images = b.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert len(images) > 40 and all(ok for _, ok in images), [alt for alt, ok in images if not ok]
        assert b.evaluate("document.querySelector('#confusion-matrix img').naturalWidth") > 100
        shown = b.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        assert shown == headings(page.read_text()) and set(CORE) <= set(shown)
        # nothing wider than the window but what scrolls inside its own box (tables)
        assert b.evaluate("document.documentElement.scrollWidth") <= width
        shot = tmp_path / f"report-{width}.png"
        b.screenshot(shot, width)
        assert shot.stat().st_size > 10_000
    finally:
        b.close()

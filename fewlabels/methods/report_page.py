"""The HTML report of a run folder: one self-contained file (figures and images as base64 PNG data URIs, no
network, no external CSS, scripts or fonts) that opens from disk, on a phone too.

It reads what the run wrote (config.yaml, metrics, results.json or final.json, rounds, pseudo-labels) and, for the
images (the most confidently wrong test images, the pseudo-labelled images), reloads the run's model and data and
predicts the test (or validation) images again. Whatever is missing (no test images, a run written by an older
version, data that cannot be reached any more) leaves its section out with a short note: a report never fails for
want of a part.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from ..report import figures
from ..utils import atomic_write_text

WRONG_IMAGES = 24  # most confidently wrong test images shown
PSEUDO_PER_CLASS = 12  # pseudo-labelled images shown per class, spread over the confidence ranking


class Missing(Exception):
    """A part of the report that cannot be made; its message is the note shown instead."""


@dataclass
class Section:
    id: str
    title: str
    body: str


@dataclass
class Outputs:
    """The run's model on its held-out images: probabilities (N, K), labels, images; and the run's data."""

    on: str
    images: Any
    labels: Any
    probs: Any
    classes: list[str]
    train: Any  # the training ImageSet (pool appended): where pseudo-labels' images are
    split: Any


def write_report(run: Path, out: Path | None = None, data: tuple | None = None, device: str = "cpu") -> Path:
    """Build the report of `run` and write it atomically to `out` (default RUN/report.html); returns the path."""
    path = Path(out) if out is not None else Path(run) / "report.html"
    atomic_write_text(path, build_report(Path(run), data=data, device=device))
    return path


def build_report(run: Path, data: tuple | None = None, device: str = "cpu") -> str:
    """The report's HTML. data: the run's (dataset, split) when the caller has them loaded."""
    return _Report(Path(run), data, device).html()


# --------------------------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(folder: Path) -> list[dict]:
    """The epochs of a run (metrics.jsonl, one JSON object a line; or metrics.json, a list); [] when absent."""
    rows: list[dict] = []
    try:
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(row, dict):
                rows.append(row)
    except OSError:
        got = _read_json(folder / "metrics.json")
        rows = [r for r in got if isinstance(r, dict)] if isinstance(got, list) else []
    return rows


def read_config(run: Path) -> tuple[str, dict[str, Any]]:
    """(command, options) of a run folder's config.yaml; ("?", {}) when unreadable."""
    try:
        text = (run / "config.yaml").read_text()
        cfg = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError):
        return "?", {}
    first = text.split("\n", 1)[0]
    command = first.removeprefix("# fewlabels ").strip() if first.startswith("# fewlabels ") else "?"
    return command, cfg if isinstance(cfg, dict) else {}


# --------------------------------------------------------------------------------------------------- html bits

esc = html.escape


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, cls: str = "") -> str:
    return f'<img src="{_uri(png)}" alt="{esc(alt)}"' + (f' class="{cls}"' if cls else "") + ">"


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v)
    return str(v)


def table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else esc(fmt(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


class _Raw(str):
    """HTML that a table cell takes as it is."""


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _yaml_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _pct(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{100 * v:.1f} %"


# --------------------------------------------------------------------------------------------------- the report


class _Report:
    def __init__(self, run: Path, data: tuple | None, device: str):
        self.run, self.data, self.device = run, data, device
        self.command, self.cfg = read_config(run)
        self.env = _read_json(run / "environment.json") or {}
        self.notes: list[str] = []
        self._outputs: Outputs | Missing | None = None
        self.mode = self.cfg.get("mode") if self.command == "transfer" else None
        raw = _read_json(run / ("final.json" if self.command == "selftrain" else "results.json"))
        self.results: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.model_dir: Path | None = run / "checkpoints" / "best"
        self.result = self.results  # the metrics of the model the report is about
        self.chosen = ""
        if self.command == "transfer":
            modes = [m for m in ("finetune", "probe", "scratch") if isinstance(self.results.get(m), dict)]
            if self.mode == "compare" and modes:
                best = max(modes, key=lambda m: (self.results[m].get("val_acc") or -1, m == "finetune"))
                self.chosen, self.result, self.model_dir = best, self.results[best], run / best / "checkpoints" / "best"
            elif modes:
                self.result = self.results[modes[0]]
        elif self.command == "pseudolabel":
            self.model_dir = None
        self.report = self.result.get("report") if isinstance(self.result.get("report"), dict) else None

    # the model's outputs, computed once, on first use
    def outputs(self) -> Outputs:
        if self._outputs is None:
            try:
                self._outputs = self._predict()
            except Missing as e:
                self._outputs = e
            except Exception as e:  # noqa: BLE001 - a report never fails for want of a part
                self._outputs = Missing(f"the run's model could not be applied to its images again "
                                        f"({type(e).__name__}: {e})")
        if isinstance(self._outputs, Missing):
            raise self._outputs
        return self._outputs

    def dataset(self) -> tuple[Any, Any]:
        if self.data is not None:
            return self.data
        from ..data.prepare import DataConfig, prepare_data
        from ..errors import FewLabelsError

        if not (self.run / "split.json").is_file() or not self.cfg:
            raise Missing("the run folder has no split.json or config.yaml to rebuild its images from")
        opts = {k: v for k, v in self.cfg.items() if k in DataConfig.options
                and k not in ("split", "labels", "labels_per_class")}
        try:
            self.data = prepare_data(DataConfig(**opts, split=str(self.run / "split.json")), None, lambda *_: None)
        except FewLabelsError as e:
            raise Missing(f"the run's data ({self.cfg.get('data')}) could not be loaded: {e}") from None
        return self.data

    def _predict(self) -> Outputs:
        from ..data.prepare import eval_sets
        from ..engine.checkpoint import load_model
        from ..engine.config import eval_batch
        from ..errors import FewLabelsError
        from ..eval import predict_logits
        from ..utils import pick_device, pick_dtype

        ds, split = self.dataset()
        sets = eval_sets(ds, split)
        on = (self.report or {}).get("on") or ("test" if "test" in sets else "val")
        if on not in sets:
            raise Missing("the run has no test or validation images")
        if self.model_dir is None:
            raise Missing("this run trains no model")
        try:
            dev = pick_device(self.device)
            model, meta = load_model(self.model_dir, dev)
        except FewLabelsError as e:
            raise Missing(f"the run's model could not be loaded: {e}") from None
        if list(meta.get("classes", [])) != list(ds.train.classes):
            raise Missing("the run's model and the data it was loaded with have other classes")
        s = sets[on]
        logits = predict_logits(model, s.images, meta["mean"], meta["std"], device=dev,
                                batch_size=eval_batch(self.cfg, s.images.shape),
                                dtype=pick_dtype(str(self.cfg.get("precision", "auto")), dev),
                                tta_flip=bool(self.cfg.get("tta_flip", False)),
                                tta_translate=int(self.cfg.get("tta_translate", 0) or 0),
                                channels_last=bool(self.cfg.get("channels_last", True)),
                                gather=False)  # under torchrun only rank 0 writes a report
        probs = (logits / float(meta.get("temperature", 1.0))).softmax(1)
        if self.report is None:  # e.g. a probe, or a run of an older version: the report from these outputs
            from ..eval import classification_report

            self.report = {"on": on, "temperature": float(meta.get("temperature", 1.0)),
                           **classification_report(probs.clamp_min(1e-12).log(), s.labels, list(ds.train.classes))}
        return Outputs(on, s.images, s.labels, probs, list(ds.train.classes), ds.train, split)

    # ----------------------------------------------------------------------------------------------- sections

    def sections(self) -> list[Section]:
        out = [self.summary(), self.curves()]
        if self.command == "selftrain":
            out.append(self.rounds())
        if self.command == "transfer" and self.mode == "compare":
            out.append(self.comparison())
        if self.command == "distill":
            out.append(self.teacher_vs_student())
        if self.command != "pseudolabel":
            out += [self.per_class(), self.confusion(), self.calibration(), self.wrong()]
        if self.command in ("pseudolabel", "selftrain"):
            out.append(self.pseudo_labels())
        out += [self.options(), self.environment()]
        return [s for s in out if s is not None]

    def _part(self, id: str, title: str, make) -> Section:
        try:
            body = make()
        except Missing as e:
            body = note(f"Left out: {e}.")
        except Exception as e:  # noqa: BLE001
            body = note(f"Left out: this part could not be made ({type(e).__name__}: {e}).")
        return Section(id, title, body)

    def summary(self) -> Section:
        def make() -> str:
            rep = self.report or {}
            split = _read_json(self.run / "split.json") or {}
            cards = [("command", self.command + (f" --mode {self.mode}" if self.mode else "")),
                     ("data", self.cfg.get("data")), ("model", self._model_name()),
                     ("labelled images", len(split.get("labelled", []) or []) or None)]
            if rep:
                on = "test" if rep.get("on") == "test" else "validation"
                cards += [(f"{on} accuracy", _pct(rep.get("accuracy"))), ("macro-F1", fmt(rep.get("macro_f1"))),
                          ("balanced accuracy", fmt(rep.get("balanced_accuracy"))), ("ECE", fmt(rep.get("ece")))]
            if self.command == "selftrain" and self.results.get("round") is not None:
                cards.append(("final model", f"round {self.results['round']}"))
            if self.chosen:
                cards.append(("details below", self.chosen))
            body = '<div class="cards">' + "".join(
                f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(fmt(v))}</div></div>'
                for k, v in cards if v not in (None, "")) + "</div>"
            if self.command == "pseudolabel":
                body += note("A pseudolabel run trains no model: its teacher's report is in the teacher's run folder "
                             f"({self.cfg.get('teacher')}/report.html).")
            return body
        return self._part("summary", "Summary", make)

    def _model_name(self) -> str | None:
        if self.command == "selftrain":
            rows = _read_json(self.run / "rounds.json") or []
            r = next((x for x in rows if isinstance(x, dict) and x.get("round") == self.results.get("round")), None)
            return r.get("model") if r else None
        return self.cfg.get("model")

    def options(self) -> Section:
        def make() -> str:
            if not self.cfg:
                raise Missing("config.yaml is missing or unreadable")
            items = "".join(f"<div><span class=\"k\">{esc(k)}</span> {esc(_yaml_value(v))}</div>"
                            for k, v in self.cfg.items())
            return f'<p class="small">As resolved in config.yaml.</p><div class="opts">{items}</div>'

        return self._part("options", "Options", make)

    def curves(self) -> Section:
        def make() -> str:
            if self.command == "selftrain":
                names = sorted((p for p in self.run.glob("round*") if p.is_dir() and p.name[5:].isdigit()),
                               key=lambda p: int(p.name[5:]))
                names += [p for p in [self.run / "finetune"] if p.is_dir()]
                hist = {("round " + p.name[5:] if p.name != "finetune" else "fine-tune"): read_history(p)
                        for p in names}
            elif self.command == "transfer" and self.mode == "compare":
                hist = {m: read_history(self.run / m) for m in ("scratch", "probe", "finetune")}
            else:
                hist = {"run": read_history(self.run)}
            hist = {k: v for k, v in hist.items() if v}
            if not hist:
                raise Missing("the run has no metrics.jsonl or metrics.json")
            return img(figures.learning_curves(hist), "learning curves")
        return self._part("learning-curves", "Learning curves", make)

    def _report(self) -> dict:
        if self.report is None:
            self.outputs()  # computes it from the model when the results lack it
        if self.report is None:
            raise Missing("the results hold no per-class report")
        return self.report

    def per_class(self) -> Section:
        def make() -> str:
            rep = self._report()
            on = "test" if rep.get("on") == "test" else "validation"
            head = (f"<p>Accuracy <b>{_pct(rep.get('accuracy'))}</b> on {rep.get('n', '?')} {on} images; macro-F1 "
                    f"{fmt(rep.get('macro_f1'))}, balanced accuracy {fmt(rep.get('balanced_accuracy'))}.</p>")
            rows = [[c, m.get("precision"), m.get("recall"), m.get("f1"), m.get("support")]
                    for c, m in (rep.get("per_class") or {}).items()]
            if not rows:
                return head + note("Left out: the per-class table (a report of an older version).")
            return head + table(["class", "precision", "recall", "F1", "support"], rows, "num")
        return self._part("per-class", "Per-class precision, recall and F1", make)

    def confusion(self) -> Section:
        def make() -> str:
            rep = self._report()
            if not rep.get("confusion_matrix"):
                raise Missing("the results hold no confusion matrix")
            classes = rep.get("classes") or [str(i) for i in range(len(rep["confusion_matrix"]))]
            return ('<div class="confusion-matrix">' + img(figures.confusion_heatmap(rep["confusion_matrix"], classes),
                                                        "confusion matrix") + "</div>"
                    + "<p class=\"small\">Rows: true class; columns: predicted class. Colour: share of the true "
                      "class's images.</p>")
        return self._part("confusion-matrix", "Confusion matrix", make)

    def calibration(self) -> Section:
        def make() -> str:
            rep = self._report()
            if not rep.get("reliability"):
                raise Missing("the results hold no calibration figures (a run of an older version)")
            t = rep.get("temperature", 1.0)
            text = (f"<p>ECE <b>{fmt(rep.get('ece'))}</b> ({rep.get('bins', 15)} bins), NLL {fmt(rep.get('nll'))}; "
                    + (f"temperature {t:.3f} (calibrated)" if t not in (None, 1.0) else
                       "uncalibrated (<code>fewlabels calibrate RUN</code> fits a temperature)") + ".</p>")
            return text + img(figures.reliability_diagram(rep["reliability"], rep.get("ece"), int(rep.get("bins", 15))),
                              "reliability diagram", "half")
        return self._part("calibration", "Calibration: reliability diagram", make)

    def wrong(self) -> Section:
        def make() -> str:
            o = self.outputs()
            conf, pred = o.probs.max(1)
            wrong = (pred != o.labels).nonzero().squeeze(1)
            if wrong.numel() == 0:
                return "<p>No mistakes on these images.</p>"
            order = wrong[conf[wrong].argsort(descending=True)][:WRONG_IMAGES]
            items = [_figure(figures.thumbnail(o.images[i]), f"true {o.classes[int(o.labels[i])]}",
                             _Raw(f'<span class="bad">→ {esc(o.classes[int(pred[i])])}</span> {float(conf[i]):.3f}'))
                     for i in order.tolist()]
            on = "test" if o.on == "test" else "validation"
            return (f"<p>{wrong.numel()} of {len(o.labels)} {on} images are misclassified; the "
                    f"{len(items)} the model was surest of:</p>" + '<div class="grid">' + "".join(items) + "</div>")
        return self._part("wrong", "Most confidently wrong", make)

    def rounds(self) -> Section:
        def make() -> str:
            rows = _read_json(self.run / "rounds.json")
            if not isinstance(rows, list) or not rows:
                raise Missing("rounds.json is missing (the run did not finish)")
            cols = ["round", "model", "train_images", "pseudo_labels", "pl_precision", "pl_coverage", "val_acc",
                    "test_acc", "minutes"]
            body = table(cols, [[r.get(c) for c in cols] for r in rows if isinstance(r, dict)], "num")
            fin = self.results
            if fin.get("round") is not None:
                body += (f"<p>Final model (checkpoints/best): round {esc(str(fin['round']))}, test accuracy "
                         f"{fmt(fin.get('test_acc'))}; supervised only (round 0): "
                         f"{fmt(rows[0].get('test_acc'))}.</p>")
            png = self.run / "rounds.png"
            if png.is_file():
                body += img(png.read_bytes(), "accuracy per round", "half")
            return body
        return self._part("rounds", "Rounds", make)

    def comparison(self) -> Section:
        def make() -> str:
            rows = [[m, r.get("val_acc"), r.get("test_acc"), r.get("macro_f1"), r.get("ece"), r.get("minutes")]
                    for m in ("scratch", "probe", "finetune") if isinstance(r := self.results.get(m), dict)]
            if not rows:
                raise Missing("results.json holds no comparison")
            return (table(["mode", "val acc", "test acc", "macro-F1", "ECE", "minutes"], rows, "num")
                    + f"<p>The sections below are about <b>{esc(self.chosen)}</b> (the best validation accuracy).</p>")
        return self._part("comparison", "Transfer comparison: scratch vs probe vs fine-tune", make)

    def teacher_vs_student(self) -> Section:
        def make() -> str:
            comp = self.results.get("compression")
            if not isinstance(comp, dict) or not comp:
                raise Missing("results.json holds no teacher vs student figures (no test images)")
            keys = [("model", "model"), ("params", "parameters"), ("flops_per_image", "FLOPs per image"),
                    ("latency_ms_batch1", "ms per image, batch 1"),
                    ("latency_ms_per_image_batch256", "ms per image, batch 256"), ("test_accuracy", "test accuracy")]
            who = [w for w in ("teacher", "student") if isinstance(comp.get(w), dict)]
            rows = [[label, *(comp[w].get(k) for w in who)] for k, label in keys]
            return (f"<p>Teacher: <code>{esc(str(self.cfg.get('teacher')))}</code>; α {fmt(self.cfg.get('alpha'), 2)},"
                    f" temperature {fmt(self.cfg.get('temperature'), 2)}.</p>" + table(["", *who], rows, "num"))
        return self._part("teacher-student", "Teacher vs student", make)

    def pseudo_labels(self) -> Section:
        def make() -> str:
            if self.command == "pseudolabel":
                return self._pseudo_round(self.run)
            folders = sorted((p for p in self.run.glob("round*") if (p / "pseudo_labels.csv").is_file()),
                             key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else 0)
            if not folders:
                raise Missing("no round wrote pseudo-labels")
            return "".join(f'<details{" open" if i == 0 else ""}><summary>round {esc(p.name[5:])}</summary>'
                           f"{self._part('pl', '', lambda p=p: self._pseudo_round(p)).body}</details>"
                           for i, p in enumerate(folders))
        return self._part("pseudo-labels", "Pseudo-labels", make)

    def _pseudo_round(self, folder: Path) -> str:
        q = _read_json(folder / "pseudo_labels_report.json") or {}
        opts = (f"threshold {fmt(self.cfg.get('threshold'), 2)}, "
                + ("soft" if self.cfg.get("soft") else "hard") + " labels, "
                + (f"balanced ({self.cfg.get('balance_to', 'uniform')})" if self.cfg.get("balance", True)
                   else "not balanced"))
        head = (f"<p>{opts}: {fmt(q.get('selected'))} pseudo-labels ({fmt(q.get('unique'))} unique images); "
                f"precision {_pct(q.get('precision'))}, coverage {_pct(q.get('coverage'))}"
                + (" (true labels known)" if "precision" in q else " (true labels unknown)") + ".</p>")
        try:
            with (folder / "pseudo_labels.csv").open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as e:
            raise Missing(f"pseudo_labels.csv cannot be read ({e})") from None
        try:
            o = self.dataset()
        except Missing as e:
            return head + note(f"Left out: the images ({e}).")
        ds, split = o
        pool_index = split.unlabelled.tolist()
        by_class: dict[int, dict[int, float]] = {}
        for r in rows:
            try:
                ti = int(r["train_index"]) if r.get("train_index") not in (None, "") else pool_index[int(r["index"])]
                lab, c = int(r["label"]), float(r["confidence"])
            except (KeyError, ValueError, IndexError):
                continue
            seen = by_class.setdefault(lab, {})
            seen[ti] = max(c, seen.get(ti, 0.0))  # an image repeated by balancing is shown once
        classes = list(ds.train.classes)
        per = q.get("per_class") or {}
        parts = []
        for lab in sorted(by_class):
            ranked = sorted(by_class[lab].items(), key=lambda kv: -kv[1])
            n = len(ranked)
            picks = sorted({round(i * (n - 1) / max(1, PSEUDO_PER_CLASS - 1)) for i in range(min(n, PSEUDO_PER_CLASS))})
            items = []
            for j in picks:
                ti, c = ranked[j]
                if not 0 <= ti < len(ds.train):
                    continue
                true = int(ds.train.labels[ti])
                cap = (_Raw(f"{c:.3f} ✓") if true == lab else
                       _Raw(f'{c:.3f} <span class="bad">true {esc(classes[true])}</span>') if true >= 0 else
                       _Raw(f"{c:.3f}"))
                frame = "wrong" if 0 <= true != lab else ""
                items.append(_figure(figures.thumbnail(ds.train.images[ti]), "", cap, frame))
            name = classes[lab] if 0 <= lab < len(classes) else str(lab)
            pc = per.get(name) or {}
            stats = f"{n} images" + (f", precision {_pct(pc['precision'])}" if pc.get("precision") is not None else "")
            parts.append(f'<div class="plrow"><div class="plclass"><b>{esc(name)}</b><br><span class="small">'
                         f'{esc(stats)}</span></div><div class="grid">{"".join(items)}</div></div>')
        return (head + '<p class="small">Per class (the teacher\'s label), from the most confident (left) to the '
                "least confident kept image; a red frame: the true label differs.</p>" + "".join(parts))

    def environment(self) -> Section:
        def make() -> str:
            if not self.env:
                raise Missing("environment.json is missing")
            return table(["", ""], [[k, v] for k, v in self.env.items()])
        return self._part("environment", "Environment", make)

    # ----------------------------------------------------------------------------------------------- page

    def html(self) -> str:
        sections = self.sections()
        nav = " · ".join(f'<a href="#{s.id}">{esc(s.title.split(":")[0])}</a>' for s in sections)
        body = "\n".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
        title = f"fewlabels {self.command}: {self.run.name}"
        return TEMPLATE().substitute(title=esc(title), run=esc(str(self.run)), date=esc(str(self.env.get("date", ""))),
                                     nav=nav, body=body)


def _figure(png: bytes, top: str, caption: Any, cls: str = "") -> str:
    cap = caption if isinstance(caption, _Raw) else esc(str(caption))
    return (f'<figure class="{cls}">{img(png, top or "image", "px")}<figcaption>'
            + (f"{esc(top)}<br>" if top else "") + f"{cap}</figcaption></figure>")


def TEMPLATE() -> Template:  # noqa: N802 - read on use: the file ships in the package
    return Template((Path(figures.__file__).parent / "template.html").read_text(encoding="utf-8"))

"""Pseudo-labelling: a teacher labels unlabelled images; keep the confident ones, balanced per class.

Selection follows Noisy Student (Xie et al. 2020, §3): drop images whose top probability is below a threshold, then
balance classes — a class with more than `per_class` images keeps its most confident ones; a class with fewer is
filled up by duplicating its images (most confident first), so that the student does not inherit the teacher's
class skew.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import targets as T
from ..config import Options, group, opt
from ..console import Console
from ..data.imageset import ImageSet, release
from ..data.prepare import EMPTY_POOL, Budget, Pool, Source, overlap_note, prepare_data
from ..engine.checkpoint import load_model
from ..engine.config import Device, eval_batch
from ..errors import FewLabelsError
from ..eval import EVAL_BATCH_SIZE, predict_logits
from ..runs import run_folder, save_config, source_split
from ..utils import atomic_write_text, pick_device, pick_dtype, release_memory, write_json
from .common import Run, Teacher, Temperature, check_classes, report_run


@dataclass
class PseudoLabels:
    """indices into the unlabelled pool's ImageSet (duplicates allowed after balancing), hard labels (M,), the
    targets a student trains on (M, K: one-hot, or softmax(logits/T) with --soft; named `probs`), the teacher's
    top probability (M,) and its whole softmax (M, K)."""

    indices: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    confidence: torch.Tensor
    teacher_probs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.indices.numel()

    def save(self, folder: Path, paths: list[str] | None = None, classes: list[str] | None = None,
             train_indices: torch.Tensor | None = None) -> None:
        """pseudo_labels.safetensors (everything, plus `train_indices`: each image's index in the training set when
        given) and pseudo_labels.csv (one row per pseudo-label, repeats included)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"indices": self.indices.contiguous(), "labels": self.labels.contiguous(),
                   "probs": self.probs.float().contiguous(), "confidence": self.confidence.float().contiguous()}
        if self.teacher_probs is not None:
            tensors["teacher_probs"] = self.teacher_probs.float().contiguous()
        train_index = train_indices[self.indices] if train_indices is not None else None
        if train_index is not None:
            tensors["train_indices"] = train_index.contiguous()
        tmp = folder / ".pseudo_labels.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(folder / "pseudo_labels.safetensors")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # quotes paths and class names holding commas or quotes
        w.writerow(["index", *(["train_index"] if train_index is not None else []), "path", "label", "class",
                    "confidence"])
        ti = train_index.tolist() if train_index is not None else None
        for row, (i, lab, c) in enumerate(zip(self.indices.tolist(), self.labels.tolist(),
                                              self.confidence.tolist())):
            w.writerow([i, *([ti[row]] if ti is not None else []), paths[i] if paths else "", lab,
                        classes[lab] if classes else str(lab), f"{c:.5f}"])
        atomic_write_text(folder / "pseudo_labels.csv", buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> PseudoLabels:
        p = Path(path)
        if p.is_dir():
            p = p / "pseudo_labels.safetensors"
        if not p.is_file():
            raise FewLabelsError(f"no pseudo-label file at {p}: run `fewlabels pseudolabel` first")
        try:
            d = load_file(str(p))
            return cls(d["indices"], d["labels"], d["probs"], d["confidence"], d.get("teacher_probs"))
        except Exception as e:  # safetensors raises its own error types for corrupt files; KeyError for others
            raise FewLabelsError(f"the pseudo-label file {p} is unreadable or not fewlabels' ({e!r}); run "
                                 f"`fewlabels pseudolabel` again to rewrite it") from None


def select(probs: torch.Tensor, *, threshold: float = 0.0, balance: bool = True, per_class: int | None = None,
           fill: bool = True, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (M,) of the pseudo-labels to keep, from teacher probabilities (N, K).

    threshold: keep images whose top probability ≥ threshold. balance: at most `per_class` per predicted class
    (default: the mean kept count per class), the most confident first; with `fill`, classes with fewer are topped up
    by repeating their images (most confident first). Without balance: every image above the threshold, once.
    prior (K,): class frequencies to balance to instead of uniform (e.g. the labelled images' own, for a pool as
    imbalanced as the labelled set): class c's cap is prior_c × the kept count (× K × per_class / K with per_class).
    """
    conf, pred = probs.max(1)
    keep = (conf >= threshold).nonzero().squeeze(1)
    if not balance:
        return keep
    k = probs.shape[1]
    kept_pred = pred[keep]
    counts = torch.bincount(kept_pred, minlength=k)
    if per_class is not None:  # a cap above the pool's size is the pool's size (duplicates fill at most to it)
        per_class = min(per_class, probs.shape[0])
    cap = per_class if per_class is not None else int(round(keep.numel() / max(1, int((counts > 0).sum()))))
    caps = [cap] * k
    if prior is not None:
        p = prior.double().clamp_min(0) / prior.double().clamp_min(0).sum()
        total = cap * k if per_class is not None else keep.numel()
        caps = [max(1, int(round(float(p[c]) * total))) for c in range(k)]
    out = []
    for c in range(k):
        members = keep[kept_pred == c]
        if members.numel() == 0:
            continue
        cap = caps[c]
        members = members[torch.argsort(conf[members], descending=True, stable=True)]
        if members.numel() >= cap:
            out.append(members[:cap])
        elif fill:
            reps = -(-cap // members.numel())
            out.append(members.repeat(reps)[:cap])
        else:
            out.append(members)
    return torch.cat(out) if out else keep[:0]


def quality(pl: PseudoLabels, true_labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Pseudo-label precision (correct / selected, per predicted class) and coverage (share of each true class's
    images that were selected at least once), where the true labels are known."""
    uniq = pl.indices.unique()
    k = len(classes)
    uniq_label = _first_label(pl, uniq)
    uniq_correct = int((true_labels[uniq] == uniq_label).sum()) / uniq.numel() if uniq.numel() else 0.0
    per = {}
    for c in range(k):
        sel = pl.labels == c
        mine = uniq[uniq_label == c]  # each image once, however often balancing repeated it
        n_true = int((true_labels == c).sum())
        per[classes[c]] = {
            "selected": int(sel.sum()),
            "unique": int(mine.numel()),
            "precision": float((true_labels[mine] == c).float().mean()) if mine.numel() else None,
            "coverage": float((true_labels[uniq] == c).sum()) / n_true if n_true else None,
        }
    return {"selected": len(pl), "unique": int(uniq.numel()), "precision": uniq_correct,
            "coverage": float(uniq.numel()) / max(1, true_labels.numel()), "per_class": per}


def _first_label(pl: PseudoLabels, uniq: torch.Tensor) -> torch.Tensor:
    lab = torch.full((int(pl.indices.max()) + 1 if len(pl) else 0,), -1, dtype=torch.long)
    lab[pl.indices] = pl.labels
    return lab[uniq]


POOL_LOGITS = "pool_logits.partial"  # in a run folder: the saved pieces of an unfinished labelling of the pool
POOL_CHUNK = 65_536  # images per saved piece of a pool's logits (resume point of an interrupted labelling)


def pool_logits(teacher: torch.nn.Module, meta: dict, pool: ImageSet, *, tta_flip: bool = False,
                tta_translate: int = 0, batch_size: int = EVAL_BATCH_SIZE,
                device: torch.device | None = None, progress: bool = False,
                resume_in: Path | None = None) -> torch.Tensor:
    """The teacher's logits (N, K) on the clean pool: no grad, bf16 where the hardware has it; the batch only bounds
    memory (the logits are the same at any batch size). progress: a progress bar on a terminal.

    resume_in: a folder where the logits are saved POOL_CHUNK images at a time (`logits-<start>.safetensors`, written
    atomically), so that labelling a large pool interrupted midway goes on from the last saved piece; the caller
    removes the folder once its pseudo-labels are saved."""
    device = device or next(teacher.parameters()).device

    def logits_of(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(teacher, images, meta["mean"], meta["std"], batch_size=batch_size, device=device,
                              dtype=pick_dtype("auto", device), tta_flip=tta_flip, tta_translate=tta_translate,
                              progress="pseudo-labelling" if progress else None)

    n = len(pool)
    if resume_in is None or n <= POOL_CHUNK:
        return logits_of(pool.images)
    resume_in.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import load_file
    from safetensors.torch import save as save_bytes

    from ..utils import atomic_write_bytes
    parts = []
    for start in range(0, n, POOL_CHUNK):
        piece = resume_in / f"logits-{start:012d}.safetensors"
        stop = min(n, start + POOL_CHUNK)
        if piece.is_file():
            try:
                z = load_file(str(piece))["logits"]
                if z.shape[0] == stop - start:
                    parts.append(z)
                    continue
            except Exception:  # noqa: BLE001 - a piece cut short: label it again
                pass
        z = logits_of(pool.images[start:stop])
        atomic_write_bytes(piece, save_bytes({"logits": z.contiguous()}))
        parts.append(z)
        release(pool.images[start:stop])  # a memory-mapped pool: its labelled chunk leaves the resident memory
    return torch.cat(parts)


def labels_from_logits(logits: torch.Tensor | list[torch.Tensor], *, hard: bool = True, temperature: float = 1.0,
                       threshold: float = 0.0, balance: bool = True, per_class: int | None = None,
                       fill: bool = True, prior: torch.Tensor | None = None) -> PseudoLabels:
    """Pseudo-labels from one teacher's logits (N, K), or from several teachers' (a list): then their softmaxes
    are averaged, for the confidence, the hard labels and the soft targets alike (an ensemble of teachers). The
    targets come from targets.from_logits, the selection from `select`."""
    group = logits if isinstance(logits, (list, tuple)) else [logits]
    if not group or any(g.shape != group[0].shape for g in group):
        raise FewLabelsError(f"the teachers' predictions do not match: shapes {[tuple(g.shape) for g in group]}")
    probs = torch.stack([g.float().softmax(1) for g in group]).mean(0)
    targets = T.from_logits(group, hard=hard, temperature=temperature)
    idx = select(probs, threshold=threshold, balance=balance, per_class=per_class, fill=fill, prior=prior)
    conf, pred = probs.max(1)
    return PseudoLabels(idx, pred[idx], targets[idx], conf[idx], probs[idx])


def teach(teacher: torch.nn.Module, meta: dict, pool: ImageSet, cfg: Any, device: torch.device,
          prior: torch.Tensor, resume_in: Path | None = None) -> PseudoLabels:
    """The teacher labels the clean pool with a command's PseudoLabel and Temperature options (`prior`: the labelled
    images' class frequencies, used with --balance-to labelled). A calibrated teacher's logits are divided by its
    temperature first (model.json), so that --threshold reads calibrated confidences."""
    logits = pool_logits(teacher, meta, pool, tta_flip=cfg.tta_flip_teacher, tta_translate=cfg.tta_translate_teacher,
                         batch_size=eval_batch(cfg, pool.images.shape), device=device, progress=Console.of(cfg).bars,
                         resume_in=resume_in) / float(meta.get("temperature", 1.0))
    release_memory()
    return labels_from_logits(logits, hard=not cfg.soft, temperature=cfg.temperature, threshold=cfg.threshold,
                              balance=cfg.balance, per_class=cfg.per_class,
                              prior=prior if cfg.balance_to == "labelled" else None)


def labelled_prior(train: ImageSet, split: Any) -> torch.Tensor:
    """Class frequencies (K,) of the labelled images of a split."""
    return torch.bincount(train.labels[split.labelled], minlength=train.num_classes).double()


@group
class PseudoLabel:
    """Which pseudo-labels the teacher gives and which are kept."""

    threshold: float = opt(0.0, "keep pseudo-labels whose top probability is at least this", ge=0, le=1)
    soft: bool = opt(False, "soft labels softmax(logits/T) instead of the teacher's hard argmax")
    balance: bool = opt(True, "balance classes: at most --per-class images each, sparse classes duplicated")
    per_class: int | None = opt(None, "per-class cap when balancing (default: the mean kept count per class)", ge=1)
    balance_to: str = opt("uniform", "class shares when balancing: uniform, or labelled (the labelled images' own "
                          "class frequencies, for data whose classes are imbalanced by nature)",
                          choices=("uniform", "labelled"))
    tta_flip_teacher: bool = opt(False, "the teacher averages the image and its mirror")
    tta_translate_teacher: int = opt(0, "the teacher also averages the image shifted by ± this many pixels "
                                        "(multi-crop TTA, as --tta-translate does for evaluation)", ge=0)


def check_label_options(cfg: Any, more: tuple[tuple[str, str, bool], ...] = ()) -> None:
    """Refuse pseudo-label options that another option switches off (they would be ignored); `more`: a command's own
    (option, the option it needs, whether that one is on)."""
    from .common import flags

    for name, needs, on in (("per_class", "balance", cfg.balance), ("temperature", "soft", cfg.soft),
                            ("balance_to", "balance", cfg.balance), *more):
        if not on and cfg.set_by_user([name], recipe=False):
            raise FewLabelsError(f"{flags([name])} only applies with {flags([needs])}: add it, or drop {flags([name])}")


class PseudoLabelCommand(Options):
    """Label the unlabelled images of a split with a trained teacher."""

    groups = (Run, Teacher, PseudoLabel, Temperature, Source, Budget, Pool, Device)
    hide = ("overwrite",)


def pseudolabel(cfg: PseudoLabelCommand | None = None, **kwargs: Any) -> dict[str, Any]:
    """Label the unlabelled pool of a split (by default the teacher's own) with a trained teacher; writes
    RUN/pseudo_labels.{safetensors,csv} and returns {"run_dir", ...} with per-class precision and coverage where the
    true labels are known. E.g. `pseudolabel(teacher="runs/digits", data="digits", threshold=0.9)`."""
    cfg = PseudoLabelCommand.build(cfg, kwargs)
    if not cfg.teacher:
        raise FewLabelsError("pseudolabel needs --teacher RUN_FOLDER")
    check_label_options(cfg)
    log = Console.of(cfg)
    device = pick_device(cfg.device)
    teacher, meta = load_model(cfg.teacher, device)
    budget = {"labels", "labels_per_class", "split"} & cfg.given
    teacher_split = source_split(cfg.teacher)
    if not budget and teacher_split is not None:  # the teacher's own unlabelled pool
        cfg = cfg.replace(split=str(teacher_split))
    elif "split" not in budget and teacher_split is not None:
        log(f"a new split from {', '.join(sorted(budget))} instead of the teacher's ({teacher_split}): images the "
            f"teacher was trained on may be in the unlabelled pool")
    run_dir = run_folder(cfg.out, "pseudolabel")
    cfg = save_config(run_dir, cfg, "pseudolabel")
    ds, split = prepare_data(cfg, run_dir, log, source=teacher_split, source_name=cfg.teacher)
    check_classes(meta, ds.train.classes, f"the teacher {cfg.teacher}", ds.train)
    if len(split.unlabelled) == 0:
        raise FewLabelsError(EMPTY_POOL)
    pool = ds.train.subset(split.unlabelled)
    pl = teach(teacher, meta, pool, cfg, device, labelled_prior(ds.train, split), run_dir / POOL_LOGITS)
    if len(pl) == 0:
        raise FewLabelsError(f"no pseudo-label passed the threshold {cfg.threshold}: lower --threshold")
    pl.save(run_dir, pool.paths, ds.train.classes, split.unlabelled)
    shutil.rmtree(run_dir / POOL_LOGITS, ignore_errors=True)
    q = quality(pl, pool.labels, ds.train.classes) if bool((pool.labels >= 0).all()) else {"selected": len(pl)}
    q.update(overlap_note(ds))
    write_json(run_dir / "pseudo_labels_report.json", q)
    report_run(run_dir, log, ds, split)
    log(f"{len(pl)} pseudo-labels ({q.get('unique', len(pl))} unique images) from {len(pool)} unlabelled"
        + (f"; precision {q['precision']:.4f}, coverage {q['coverage']:.4f}" if "precision" in q else "")
        + f": {run_dir / 'pseudo_labels.csv'}")
    return {"run_dir": str(run_dir), **q}

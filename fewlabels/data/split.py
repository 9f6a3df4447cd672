"""Label budgets: which training images are labelled, which are held out for validation, which are unlabelled.

A split is three disjoint index sets into the training pool. It is seeded, stratified by class, saved as
`split.json` in the run folder, and can be reused by later commands (`--split RUN_DIR`), so that a teacher, its
pseudo-labels and its student all agree on which images were labelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FewLabelsError
from ..utils import write_json


@dataclass
class Split:
    labelled: torch.Tensor  # int64 indices into the training pool
    val: torch.Tensor
    unlabelled: torch.Tensor
    seed: int
    pool_size: int

    def to_json(self) -> dict:
        return {"seed": self.seed, "pool_size": self.pool_size, "labelled": self.labelled.tolist(),
                "val": self.val.tolist(), "unlabelled": self.unlabelled.tolist()}

    def save(self, path: Path, labelled_paths: list[str] | None = None) -> None:
        """split.json; with the labelled images' paths, so that a run starting from this one can tell by file
        whether its validation or test images were this run's training images."""
        write_json(path, {**self.to_json(), **({"labelled_paths": labelled_paths} if labelled_paths else {})})

    @classmethod
    def load(cls, path: str | Path, pool_size: int | None = None) -> Split:
        """Load from a split.json file or a run folder that holds one."""
        p = Path(path)
        if p.is_dir():
            p = p / "split.json"
        if not p.is_file():
            raise FewLabelsError(f"no split file at {p}: pass a run folder made by fewlabels, or its split.json")
        try:
            d = json.loads(p.read_text())
            s = cls(torch.tensor(d["labelled"], dtype=torch.long), torch.tensor(d["val"], dtype=torch.long),
                    torch.tensor(d["unlabelled"], dtype=torch.long), int(d["seed"]), int(d["pool_size"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FewLabelsError(f"split file {p} is not a valid fewlabels split ({e})") from None
        if pool_size is not None and s.pool_size != pool_size:
            raise FewLabelsError(f"split file {p} was made for a training pool of {s.pool_size} images, but this "
                                 f"dataset has {pool_size}: use the same dataset, or make a new split")
        s.check(p)
        return s

    def check(self, where: Path | str) -> None:
        """Indices in range, none repeated, and no image in two parts: a split.json edited or damaged by hand is
        refused with what is wrong, not used (a wrong index would read another image, a shared one leak)."""
        fix = "make a new split (leave out --split) or restore the file"
        parts = {"labelled": self.labelled, "val": self.val, "unlabelled": self.unlabelled}
        for name, idx in parts.items():
            bad = idx[(idx < 0) | (idx >= self.pool_size)]
            if bad.numel():
                raise FewLabelsError(f"split file {where}: {name} index {int(bad[0])} is outside the training pool "
                                     f"of {self.pool_size} images; {fix}")
            if idx.unique().numel() != idx.numel():
                raise FewLabelsError(f"split file {where}: {name} lists an image more than once; {fix}")
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                both = set(parts[a].tolist()) & set(parts[b].tolist())
                if both:
                    raise FewLabelsError(f"split file {where}: {len(both)} image(s) are both {a} and {b} (e.g. index "
                                         f"{min(both)}); {fix}")


def _stratified_take(labels: torch.Tensor, idx: torch.Tensor, per_class: torch.Tensor,
                     g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """From `idx`, take per_class[c] random images of each class c; return (taken, rest)."""
    taken = []
    for c in range(per_class.numel()):
        members = idx[labels[idx] == c]
        members = members[torch.randperm(members.numel(), generator=g)]
        taken.append(members[: int(per_class[c])])
    t = torch.cat(taken) if taken else torch.empty(0, dtype=torch.long)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[t] = False
    rest = idx[mask[idx]]
    return t.sort().values, rest


def _allocate(total: int, counts: torch.Tensor) -> torch.Tensor:
    """Split `total` over classes in proportion to `counts` (largest remainders), at least 1 each when possible."""
    share = counts.double() * total / counts.sum()
    alloc = share.floor().long()
    rem = total - int(alloc.sum())
    order = torch.argsort(share - alloc, descending=True)
    alloc[order[:rem]] += 1
    return torch.minimum(alloc, counts)


def make_split(labels: torch.Tensor, num_classes: int, *, labels_total: int | None = None,
               labels_per_class: int | None = None, val: int | float = 0.1, seed: int = 0) -> Split:
    """Make a seeded, stratified split of a training pool.

    labels: int64 (N,) true labels of the pool (the labels of 'unlabelled' images are only used for stratifying the
    validation split and, later, for reporting pseudo-label precision — never for training); -1 marks an image
    whose label nobody knows (a user's unlabelled photos): it is always in the unlabelled part.
    labels_total / labels_per_class: the label budget (at most one of them; neither = every remaining image with a
    label is labelled), drawn from the images with a label.
    val: validation size, as a count or a fraction of the images with a label; held out before the budget is drawn.
    """
    n = labels.numel()
    if labels_total is not None and labels_per_class is not None:
        raise FewLabelsError("give either --labels or --labels-per-class, not both")
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n)
    unknown = idx[labels < 0]  # truly unlabelled: never validation, never in the budget
    idx = idx[labels >= 0]
    n_known = idx.numel()
    counts = torch.bincount(labels[idx], minlength=num_classes)
    n_val = int(round(val * n_known)) if isinstance(val, float) and val < 1 else int(val)
    if n_val < 0 or n_val >= max(n_known, 1):
        raise FewLabelsError(f"validation size {val} does not fit {n_known} labelled training images: use a smaller "
                             "--val")
    val_idx, pool = _stratified_take(labels, idx, _allocate(n_val, counts), g) if n_val else (idx[:0], idx)
    pool_counts = torch.bincount(labels[pool], minlength=num_classes)
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise FewLabelsError(f"--labels-per-class must be at least 1, got {labels_per_class}")
        short = [(c, int(pool_counts[c])) for c in range(num_classes) if pool_counts[c] < labels_per_class]
        if short:
            raise FewLabelsError(f"--labels-per-class {labels_per_class} is more than some classes have in the "
                                 f"training pool (class index, images): {short[:5]}; lower it or use --val 0")
        per_class = torch.full((num_classes,), labels_per_class, dtype=torch.long)
    elif labels_total is not None:
        if labels_total > pool.numel():
            raise FewLabelsError(f"--labels {labels_total} is larger than the training pool ({pool.numel()} images "
                                 f"after holding out {n_val} for validation): lower --labels or --val")
        present = int((pool_counts > 0).sum())
        if labels_total < present:
            raise FewLabelsError(f"--labels {labels_total} is smaller than the number of classes ({present}): a "
                                 f"stratified budget needs at least one label per class")
        per_class = _allocate(labels_total, pool_counts)
        per_class = torch.where((per_class == 0) & (pool_counts > 0), torch.ones_like(per_class), per_class)
        while int(per_class.sum()) > labels_total:  # the at-least-one rule can overshoot by a few
            per_class[int(torch.argmax(per_class))] -= 1
    else:
        return Split(pool.sort().values, val_idx, unknown, seed, n)
    lab, unl = _stratified_take(labels, pool, per_class, g)
    return Split(lab, val_idx, torch.cat([unl, unknown]).sort().values, seed, n)

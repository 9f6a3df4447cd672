"""CSV/TSV manifests as a dataset: one row per image, ``path,label`` with an optional ``split`` column.

This is what most labelling tools export. Rules, each broken one an error naming the file and line:

- header optional (see :func:`fewlabels.data.table.read_table`); columns by name when there is a header (path/file/
  filename/filepath/image/image_path; label/class/category/target; split/subset/set), else path, label, split;
- paths relative to the manifest's folder (absolute ones kept); every file must exist; a file listed twice is refused;
- an empty label means unlabelled: the image joins the pool of self-training (split "unlabelled");
- split: train (the default when the column or the cell is empty), val/validation, test, or unlabelled; a val or test
  image needs a label, and that label must also be a training label (a class seen only in test could never be
  predicted);
- classes: the sorted distinct labels of the training rows.

Without test rows, a stratified 20% of the labelled training rows is held out as the test split (seed 0), as for a
class tree, so that a test accuracy exists and never sees a training image.
"""

from __future__ import annotations

import os
from pathlib import Path

from fewlabels.data.folder import IMAGE_EXTENSIONS, FolderFiles
from fewlabels.errors import FewLabelsError

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".tab")
PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "set")
_SPLITS = {"": "train", "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "dev": "val", "test": "test", "testing": "test", "unlabelled": "unlabelled", "unlabeled": "unlabelled"}


def is_manifest(spec: str | Path) -> bool:
    return Path(spec).suffix.lower() in MANIFEST_EXTENSIONS


def read_manifest(path: str | Path) -> FolderFiles:
    """The manifest's files by split (train, val, test, unlabelled) with their labels (-1 for unlabelled)."""
    from fewlabels.data.table import read_table, resolve_path

    p = Path(path).expanduser()
    if not p.is_file():
        raise FewLabelsError(f"manifest {p} does not exist: check the path")
    table = read_table(p)
    where = f"{p}"
    path_col = table.column(PATH_COLUMNS, 0)
    label_col = table.column(LABEL_COLUMNS, 1)
    split_col = table.column(SPLIT_COLUMNS, 2 if table.header is None else -1)
    if table.header is not None and label_col is None:
        raise FewLabelsError(f"{where}: the header has no label column (one of {', '.join(LABEL_COLUMNS)}): add one; "
                             "an empty label marks an unlabelled image")
    rows: dict[str, list[tuple[int, str, str]]] = {"train": [], "val": [], "test": [], "unlabelled": []}
    seen: dict[str, int] = {}
    for line, cells in table.rows:
        def cell(i: int | None, cells: list[str] = cells) -> str:
            return cells[i].strip() if i is not None and 0 <= i < len(cells) else ""

        raw = cell(path_col)
        if not raw:
            raise FewLabelsError(f"{where} line {line}: no path in this row; every row needs an image path")
        file = resolve_path(table, raw)
        if not os.path.isfile(file):
            raise FewLabelsError(f"{where} line {line}: {raw} does not exist (looked for {file}); paths are relative "
                                 f"to the manifest's folder {p.parent.resolve()}: fix the path or remove the row")
        if os.path.splitext(file)[1].lower() not in IMAGE_EXTENSIONS:
            raise FewLabelsError(f"{where} line {line}: {raw} is not an image file (extensions: "
                                 f"{', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))})")
        real = os.path.realpath(file)
        if real in seen:
            raise FewLabelsError(f"{where} line {line}: {raw} is listed already on line {seen[real]}; list each "
                                 "image once")
        seen[real] = line
        split_name = cell(split_col).lower()
        if split_name not in _SPLITS:
            raise FewLabelsError(f"{where} line {line}: unknown split {cell(split_col)!r}; use train, val, test or "
                                 "unlabelled (or leave it empty for train)")
        split, label = _SPLITS[split_name], cell(label_col)
        if not label and split in ("val", "test"):
            raise FewLabelsError(f"{where} line {line}: a {split} image needs a label; give it one, or mark it "
                                 "unlabelled")
        if not label:
            split = "unlabelled"
        rows[split].append((line, file, label))
    classes = sorted({label for _, _, label in rows["train"]})
    if not classes:
        raise FewLabelsError(f"{where} has no labelled training rows: give some rows a label (path,label)")
    index = {c: i for i, c in enumerate(classes)}
    for split in ("val", "test"):
        for line, _, label in rows[split]:
            if label not in index:
                raise FewLabelsError(f"{where} line {line}: label {label!r} appears in {split} but not in train, so "
                                     "no model could predict it: add training images of it, or fix the label")
    files = FolderFiles(p.parent.resolve(), "manifest", classes, manifest=str(p.resolve()))
    for split in ("train", "val", "test", "unlabelled"):
        if rows[split] or split == "train":
            files.paths[split] = [f for _, f, _ in rows[split]]
            files.labels[split] = [index[lab] if split != "unlabelled" else -1 for _, _, lab in rows[split]]
    return files

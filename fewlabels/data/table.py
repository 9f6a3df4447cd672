"""CSV/TSV tables as labelling tools export them: lists of image paths, manifests (``path,label[,split]``).

One reader for every table a user hands over, so that they all follow the same rules:

- delimiter by extension: ``.tsv``/``.tab`` → tab; otherwise (``.csv``, ``.txt``) sniffed from the first lines among
  comma, semicolon and tab (a European spreadsheet writes ``;``), comma when the sniffer cannot tell (a one-column
  list of paths has no delimiter at all);
- UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8" writes one); UTF-16 with its BOM (Excel's "Unicode
  text") too. Anything else is an error naming the line, since guessing an 8-bit code page would silently turn
  accented file names into paths that do not exist;
- blank lines and lines starting with ``#`` are skipped (comments are blanked before parsing, so a stray quote in a
  comment cannot swallow the rows after it); cells are stripped;
- header optional: the first row is a header when one of its cells is a path column name (:data:`PATH_COLUMNS`,
  case-insensitive, ``Image Path`` = ``image_path``) and no file of that name exists beside the table — a list of
  images whose first file is called ``image`` is still data.

Paths in a table are relative to the table's folder (not the working folder: the table then works from anywhere,
and moves with its images); ``~`` is expanded, absolute paths are kept (:func:`resolve_path`). Errors name the file
and the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fewlabels.errors import FewLabelsError

PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "image_path")
TAB_EXTENSIONS = (".tsv", ".tab")
SNIFF_DELIMITERS = ",;\t"
SNIFF_LINES = 20  # enough rows to tell the delimiter, few enough that a huge file is not read twice


@dataclass
class Table:
    """A table's rows with their line numbers (1-based, in the file: what a user's editor shows)."""

    path: Path
    header: list[str] | None
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    delimiter: str = ","
    header_line: int | None = None  # the line of the header, when there is one

    def column(self, names: Sequence[str], default_index: int) -> int | None:
        """The index of the first of `names` in the header (case-insensitive; `names` in order of preference), or
        None when the header has none of them; without a header, `default_index` (None when it is negative: a
        column that only exists by name)."""
        if self.header is None:
            return default_index if default_index >= 0 else None
        cells = [_norm(c) for c in self.header]
        for name in names:
            if _norm(name) in cells:
                return cells.index(_norm(name))
        return None

    @property
    def folder(self) -> Path:
        """The folder relative paths in the table are relative to."""
        return self.path.parent


def read_table(path: str | Path) -> Table:
    """Read a CSV/TSV file by the module's rules; FewLabelsError naming the file (and line) when it cannot be."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FewLabelsError(f"table {p} does not exist: check the path")
    if p.is_dir():
        raise FewLabelsError(f"{p} is a folder, not a CSV/TSV file")
    p = p.absolute()
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise FewLabelsError(f"cannot read {p}: {err.strerror or err}") from None
    text = _decode(raw, p)
    lines = text.splitlines(keepends=True)
    # comment lines become blank lines: skipped by the parser, and every later row keeps its line number
    lines = ["\n" if line.lstrip().startswith("#") else line for line in lines]
    delimiter = "\t" if p.suffix.lower() in TAB_EXTENSIONS else _sniff(lines)
    rows: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO("".join(lines), newline=""), delimiter=delimiter)
    end = 0  # the last line of the previous record: a quoted cell may span lines
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            cells = [c.strip() for c in record]
            if any(cells):
                rows.append((start, cells))
    except csv.Error as err:
        raise FewLabelsError(f"{p} line {end + 1}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} ({err}); "
                             "fix the line (a quote that is never closed?)") from None
    header = header_line = None
    if rows and _is_header(rows[0][1], p.parent):
        header_line, header = rows.pop(0)
    return Table(p, header, rows, delimiter, header_line)


def resolve_path(table: Table, cell: str) -> str:
    """The file a table's cell names: ``~`` expanded, absolute kept, else relative to the table's folder."""
    cell = os.path.expanduser(cell.strip())
    return cell if os.path.isabs(cell) else os.path.join(str(table.folder), cell)


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _is_header(cells: list[str], folder: Path) -> bool:
    names = {_norm(n) for n in PATH_COLUMNS}
    named = [c for c in cells if _norm(c) in names]
    return bool(named) and not any((folder / c).exists() for c in named)


def _decode(raw: bytes, path: Path) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise FewLabelsError(f"{path} line {line}: not UTF-8 text (byte {err.object[err.start]:#04x}); save the table "
                             "as UTF-8 (in Excel: CSV UTF-8)") from None


def _sniff(lines: list[str]) -> str:
    sample = "".join([line for line in lines if line.strip()][:SNIFF_LINES])
    if not sample:
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:  # one column, or nothing consistent: the comma of "CSV"
        return ","

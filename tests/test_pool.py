"""Tables (CSV/TSV as labelling tools write them) and the unlabelled pool: listing, decoding, bad images, cache."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data import folder, pool
from fewlabels.data.pool import list_pool, load_pool
from fewlabels.data.table import read_table, resolve_path
from fewlabels.errors import FewLabelsError

CLASSES = ["a", "b"]


def _png(path, colour=(200, 30, 30), size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    """photos/x.png, photos/sub/y.png, photos/sub/deeper/z.png, a hidden file and a text file."""
    root = tmp_path / "photos"
    _png(root / "x.png", (255, 0, 0))
    _png(root / "sub" / "y.png", (0, 255, 0))
    _png(root / "sub" / "deeper" / "z.png", (0, 0, 255))
    _png(root / ".hidden.png")
    _png(root / ".ipynb_checkpoints" / "w.png")
    (root / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------------------------------------------- tables


def test_read_table_header_delimiters_comments_bom_and_line_numbers(tmp_path):
    (tmp_path / "a.csv").write_text("\ufeffImage Path;Label\n# a comment with a \" quote\n\n x.png ; cat\ny.png;\n",
                                    encoding="utf-8")
    t = read_table(tmp_path / "a.csv")
    assert t.delimiter == ";" and t.header == ["Image Path", "Label"] and t.header_line == 1
    assert t.rows == [(4, ["x.png", "cat"]), (5, ["y.png", ""])]
    assert t.column(("path", "image_path"), 0) == 0 and t.column(("label",), 1) == 1
    assert t.column(("split",), 2) is None  # with a header, columns exist by name only
    (tmp_path / "b.tsv").write_text("x,1.png\tcat\n")  # a comma in a file name: TSV by its extension
    t = read_table(tmp_path / "b.tsv")
    assert t.header is None and t.rows == [(1, ["x,1.png", "cat"])]
    assert t.column(("path",), 0) == 0 and t.column(("split",), -1) is None
    assert resolve_path(t, "x,1.png") == os.path.join(str(tmp_path), "x,1.png")
    assert resolve_path(t, "/abs/y.png") == "/abs/y.png"
    assert resolve_path(t, "~/y.png") == os.path.expanduser("~/y.png")


def test_read_table_first_row_named_like_a_column_but_a_file_is_data(tmp_path):
    (tmp_path / "image").write_bytes(b"")  # a file called "image": the first row lists it, not a header
    (tmp_path / "l.csv").write_text("image\nother.png\n")
    assert read_table(tmp_path / "l.csv").header is None


def test_read_table_errors_name_file_and_line(tmp_path):
    (tmp_path / "latin.csv").write_bytes("path\nok.png\ncaf\xe9.png\n".encode("latin-1"))
    with pytest.raises(FewLabelsError, match=r"latin\.csv line 3: not UTF-8"):
        read_table(tmp_path / "latin.csv")
    with pytest.raises(FewLabelsError, match="does not exist"):
        read_table(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------------- listing


def test_list_pool_folder_recursive_sorted_hidden_skipped(photos):
    with pytest.warns(UserWarning, match="Ignored 1 file"):
        got = list_pool(str(photos))
    assert got == [str(photos / "sub" / "deeper" / "z.png"), str(photos / "sub" / "y.png"), str(photos / "x.png")]


def test_list_pool_csv_with_and_without_header_and_tsv(tmp_path, photos):
    lists = tmp_path / "lists"
    lists.mkdir()
    # a manifest with an empty label column is a pool list: the path column by name, other columns ignored
    (lists / "manifest.csv").write_text("label,path\n,../photos/x.png\n,../photos/sub/y.png\n")
    assert list_pool(lists / "manifest.csv") == [str(photos / "x.png"), str(photos / "sub" / "y.png")]
    (lists / "plain.csv").write_text(f"{photos / 'x.png'}\n../photos/sub/y.png,ignored\n")  # no header: column 1
    assert [os.path.realpath(p) for p in list_pool(str(lists / "plain.csv"))] == [
        str(photos / "x.png"), str(photos / "sub" / "y.png")]
    (lists / "p.tsv").write_text("filename\tscore\n../photos/x.png\t0.3\n")
    assert [os.path.realpath(p) for p in list_pool(lists / "p.tsv")] == [str(photos / "x.png")]


def test_list_pool_several_specs_deduplicated_in_order(tmp_path, photos):
    (tmp_path / "one.csv").write_text("path\nphotos/sub/y.png\nphotos/x.png\n")
    extra = _png(tmp_path / "more" / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes.txt
        got = list_pool(f"{tmp_path / 'one.csv'},{photos},{extra.parent}")
        same = list_pool([str(tmp_path / "one.csv"), str(photos), str(extra.parent)])
    assert got == same
    assert [os.path.realpath(p) for p in got] == [str(photos / "sub" / "y.png"), str(photos / "x.png"),
                                                  str(photos / "sub" / "deeper" / "z.png"), str(extra)]


def test_list_pool_errors(tmp_path, photos):
    with pytest.raises(FewLabelsError, match="nowhere does not exist"):
        list_pool(str(tmp_path / "nowhere"))
    (tmp_path / "l.csv").write_text("path\nphotos/x.png\n\nphotos/gone.png\n")
    with pytest.raises(FewLabelsError, match=r"l\.csv line 4: photos/gone\.png does not exist"):
        list_pool(tmp_path / "l.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FewLabelsError, match="has no images"):
        list_pool(tmp_path / "empty")
    (tmp_path / "blank.csv").write_text("path\n# nothing yet\n")
    with pytest.raises(FewLabelsError, match="lists no images"):
        list_pool(tmp_path / "blank.csv")
    (tmp_path / "n.csv").write_text("path\nphotos/notes.txt\n")
    with pytest.raises(FewLabelsError, match="line 2: photos/notes.txt is not an image"):
        list_pool(tmp_path / "n.csv")


# ---------------------------------------------------------------------------------------------------- decoding


def test_load_pool_shape_gray_from_rgb_labels_and_paths(tmp_path):
    a = _png(tmp_path / "p" / "a.png", (255, 0, 0), size=(20, 10))
    b = _png(tmp_path / "p" / "b.png", (90, 0, 0), size=(8, 8), mode="L")
    rgb = load_pool(str(tmp_path / "p"), (3, 8, 8), classes=CLASSES, progress=False)
    assert rgb.images.shape == (2, 3, 8, 8) and rgb.images.dtype == torch.uint8
    assert rgb.labels.tolist() == [-1, -1] and rgb.classes == CLASSES and rgb.paths == [str(a), str(b)]
    assert rgb.images[0, :, 4, 4].tolist() == [255, 0, 0] and rgb.images[1, :, 4, 4].tolist() == [90, 90, 90]
    gray = load_pool(str(tmp_path / "p"), (1, 6, 6), classes=["x", "y", "z"], progress=False)
    expected = np.asarray(Image.open(a).convert("L"))[5, 10]  # PIL's RGB → L, as a training folder converts
    assert gray.images.shape == (2, 1, 6, 6) and int(gray.images[0, 0, 3, 3]) == int(expected)
    assert gray.classes == ["x", "y", "z"]


def test_load_pool_bad_images_stop_and_skip(tmp_path):
    _png(tmp_path / "p" / "a.png")
    (tmp_path / "p" / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "p" / "c.png", (0, 0, 255))
    with pytest.raises(FewLabelsError, match=r"broken\.png.*--bad-images skip"):
        load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, progress=False)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image.*broken\.png"):
        s = load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, bad_images="skip", progress=False)
    assert [os.path.basename(p) for p in s.paths] == ["a.png", "c.png"] and len(s) == 2
    assert s.images[1, :, 0, 0].tolist() == [0, 0, 255]  # the good rows moved up in place
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):  # said again on a cached load
        again = load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, bad_images="skip", progress=False)
    assert again.paths == s.paths and torch.equal(again.images, s.images)


def test_load_pool_second_load_is_a_cache_hit(tmp_path, monkeypatch):
    _png(tmp_path / "p" / "a.png")
    _png(tmp_path / "p" / "b.png", (0, 255, 0))
    first = load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, progress=False, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*/*/unlabelled.safetensors"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of loading the cache")

    monkeypatch.setattr(folder, "_decode_all", no_decoding)
    second = load_pool(str(tmp_path / "p"), (3, 8, 8), classes=["other", "names"], progress=False,
                       cache_dir=tmp_path / "c")
    assert torch.equal(first.images, second.images) and second.paths == first.paths
    assert second.classes == ["other", "names"]
    with pytest.raises(AssertionError, match="decoded again"):  # another shape is another entry
        load_pool(tmp_path / "p", (1, 8, 8), classes=CLASSES, progress=False, cache_dir=tmp_path / "c")
    _png(tmp_path / "p" / "new.png")  # a new file: a new listing, decoded again
    with pytest.raises(AssertionError, match="decoded again"):
        load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, progress=False, cache_dir=tmp_path / "c")


def test_load_pool_checks_its_arguments(tmp_path):
    _png(tmp_path / "p" / "a.png")
    with pytest.raises(FewLabelsError, match="bad_images"):
        load_pool(tmp_path / "p", (3, 8, 8), classes=CLASSES, bad_images="ignore")
    with pytest.raises(FewLabelsError, match="shape"):
        load_pool(tmp_path / "p", (2, 8, 8), classes=CLASSES)
    assert pool.POOL_SPLIT == "unlabelled"

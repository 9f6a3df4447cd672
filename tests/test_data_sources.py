"""Data sources: digits, image folders (layouts, conversions, bad files, decode cache) and offline torchvision."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data import cache, folder, sources
from fewlabels.data.sources import SOURCES, Dataset, load_dataset, stratified_split
from fewlabels.errors import FewLabelsError


def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _rgb(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A random RGB image of size (w, h)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _gray(value: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new("L", size, value)


def _tree(root: Path, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            _save(root / name / f"{i}.{ext}", _rgb(100 * c + i))
    return root


def _load(path: Path, **kw) -> Dataset:
    return load_dataset(str(path), progress=False, **kw)


# ---------------------------------------------------------------------------------------------------- digits


def test_digits_shapes_and_deterministic_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 16, 16)
    assert len(a.train) + len(a.test) == 1797 and a.num_classes == 10 and a.classes == [str(d) for d in range(10)]
    assert abs(len(a.test) / 1797 - 0.2) < 0.01 and a.val is None
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.info["test_split"]["seed"] == 0
    # stratified: every class in test at ~20% of its images
    counts = torch.bincount(a.test.labels, minlength=10) / torch.bincount(torch.cat([a.train.labels, a.test.labels]))
    assert ((counts - 0.2).abs() < 0.02).all()
    assert int(a.train.images.max()) == 255 and len(a.mean) == len(a.std) == 1


def test_digits_pixels_match_a_pil_reference():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = load_dataset("digits")
    train_idx, test_idx = stratified_split(torch.from_numpy(d.target))
    for row, i in [(0, int(train_idx[0])), (5, int(train_idx[5]))]:
        ref = Image.fromarray((d.images[i] * 255 / 16).astype(np.float32), "F").resize((16, 16), Image.BILINEAR)
        assert np.abs(np.asarray(ref) - ds.train.images[row, 0].numpy()).max() <= 0.5 + 1e-4
        assert ds.train.labels[row] == d.target[i]
    assert torch.equal(ds.test.labels, torch.from_numpy(d.target[test_idx.numpy()]))


def test_stratified_split_is_disjoint_and_keeps_singletons_in_train():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    train, test = stratified_split(labels, 0.2, seed=0)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == 16
    assert torch.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert torch.equal(stratified_split(labels, 0.2, seed=0)[1], test)


def test_channel_stats_match_float_reference():
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    mean, std = sources.channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-4)


def test_sources_names():
    assert {"digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "stl10"} <= set(SOURCES)
    with pytest.raises(FewLabelsError, match="neither a dataset name"):
        load_dataset("no-such-source")


# ---------------------------------------------------------------------------------------------------- layouts


def test_single_tree_gets_stratified_test_split(tmp_path):
    ds = _load(_tree(tmp_path / "pets", per_class=10))
    assert ds.classes == ["cat", "dog", "fox"] and ds.name == "pets"
    assert len(ds.train) == 24 and len(ds.test) == 6 and ds.val is None
    assert torch.bincount(ds.test.labels).tolist() == [2, 2, 2]
    assert set(ds.train.paths).isdisjoint(ds.test.paths)
    assert ds.info["layout"] == "tree" and ds.info["test_split"]["fraction"] == 0.2
    again = _load(tmp_path / "pets")
    assert again.test.paths == ds.test.paths and torch.equal(again.test.images, ds.test.images)
    assert ds.train.images.shape[1:] == (3, 10, 12) and len(ds.mean) == 3


def test_train_test_val_layout(tmp_path):
    _tree(tmp_path / "train", per_class=4)
    _tree(tmp_path / "test", per_class=2, classes=("cat", "fox"))  # a class missing from test is fine
    _tree(tmp_path / "val", per_class=1)
    ds = _load(tmp_path)
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) == 12
    assert ds.test.classes == ds.classes and torch.bincount(ds.test.labels, minlength=3).tolist() == [2, 0, 2]
    assert len(ds.val) == 3 and ds.info["layout"] == "splits" and "test_split" not in ds.info
    # labels follow the class of the folder a file is in
    for path, label in zip(ds.test.paths, ds.test.labels.tolist()):
        assert Path(path).parent.name == ds.classes[label]
    cached = _load(tmp_path)
    assert cached.info["cache_hit"] and torch.equal(cached.val.images, ds.val.images)
    assert torch.equal(cached.test.images, ds.test.images) and cached.test.paths == ds.test.paths


def test_test_class_not_in_train_is_an_error(tmp_path):
    _tree(tmp_path / "train", classes=("cat", "dog"))
    _tree(tmp_path / "test", classes=("cat", "cow"))
    with pytest.raises(FewLabelsError, match="cow"):
        _load(tmp_path)


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "empty_class", "test_without_train"])
def test_folder_errors(tmp_path, case):
    if case == "missing":
        path, match = tmp_path / "nope", "does not exist"
    elif case == "file":
        path, match = _save(tmp_path / "x.png", _gray(0)), "not a folder"
    elif case == "no_classes":
        path, match = tmp_path / "flat", "no class subfolders"
        _save(path / "a.png", _gray(0))
    elif case == "empty_class":
        path, match = _tree(tmp_path / "d"), "empty has no images"
        (path / "empty").mkdir()
        (path / "empty" / "notes.txt").write_text("no images here")
    else:
        path, match = tmp_path / "d", "no train/"
        _tree(path / "test")
    with pytest.raises(FewLabelsError, match=match):
        _load(path)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = _tree(tmp_path / "d", per_class=2)
    (root / "cat" / "notes.txt").write_text("x")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    _save(root / ".ipynb_checkpoints" / "a.png", _gray(0))
    with pytest.warns(UserWarning, match="Ignored 1 file"):
        ds = _load(root, image_size=8)
    assert ds.classes == ["cat", "dog", "fox"] and len(ds.train) + len(ds.test) == 6


# ---------------------------------------------------------------------------------------------------- conversions


def test_grayscale_set_keeps_one_channel_and_16_bit_is_scaled(tmp_path):
    root = tmp_path / "g"
    _save(root / "a" / "l.png", _gray(77))
    _save(root / "a" / "la.png", Image.merge("LA", [_gray(200), _gray(255)]))
    wide = np.full((10, 12), 40000, dtype=np.uint16)
    _save(root / "b" / "sixteen.png", Image.fromarray(wide))
    _save(root / "b" / "bilevel.png", _gray(255).convert("1"))
    ds = _load(root)
    images = torch.cat([ds.train.images, ds.test.images])
    assert images.shape[1] == 1
    by_name = {Path(p).name: img for p, img in zip(ds.train.paths + ds.test.paths, images)}
    assert int(by_name["l.png"].float().mean()) == 77
    assert int(by_name["la.png"].float().mean()) == 200  # opaque alpha changes nothing
    assert int(by_name["sixteen.png"].float().mean()) == 40000 >> 8  # 156, where clipping would give 255
    assert int(by_name["bilevel.png"].float().mean()) == 255


def test_mixed_modes_become_rgb(tmp_path):
    root = tmp_path / "m"
    _save(root / "a" / "gray.png", _gray(90))
    rgba = Image.new("RGBA", (12, 10), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # fully transparent white → black
    _save(root / "a" / "rgba.png", rgba)
    _save(root / "b" / "palette.gif", _rgb(1).convert("P"))
    _save(root / "b" / "cmyk.jpg", Image.new("CMYK", (12, 10), (0, 0, 0, 0)))
    _save(root / "b" / "sixteen.tif", Image.fromarray(np.full((10, 12), 65535, dtype=np.uint16)))
    ds = _load(root, bad_images="stop")
    images = torch.cat([ds.train.images, ds.test.images])
    by_name = {Path(p).name: img for p, img in zip(ds.train.paths + ds.test.paths, images)}
    assert images.shape[1:] == (3, 10, 12)
    assert (by_name["gray.png"] == 90).all()  # replicated into three equal channels
    assert by_name["rgba.png"][:, 1, 1].tolist() == [200, 100, 50]
    assert by_name["rgba.png"][:, 0, 0].tolist() == [0, 0, 0]
    assert (by_name["cmyk.jpg"] >= 250).all()  # CMYK (0,0,0,0) is white
    assert (by_name["sixteen.tif"] == 255).all()
    palette = np.asarray(_rgb(1).convert("P").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(by_name["palette.gif"].numpy(), palette)


def test_sizes_most_common_or_image_size(tmp_path):
    root = tmp_path / "s"
    for i in range(4):
        _save(root / "a" / f"{i}.png", _rgb(i, (12, 10)))
    _save(root / "b" / "big.png", _rgb(9, (48, 20)))
    _save(root / "b" / "b.png", _rgb(8, (12, 10)))
    with pytest.warns(UserWarning, match="1 of 6 images .* not 12x10"):
        ds = _load(root)
    assert ds.train.images.shape[2:] == (10, 12)
    sized = _load(root, image_size=8)
    assert sized.train.images.shape[1:] == (3, 8, 8)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: shown as 10 wide, 20 high
    path = tmp_path / "o" / "a" / "x.jpg"
    path.parent.mkdir(parents=True)
    img.save(path, exif=exif)
    _save(tmp_path / "o" / "a" / "y.png", Image.new("RGB", (10, 20)))
    ds = _load(tmp_path / "o")
    assert ds.train.images.shape[2:] == (20, 10)


def _count_passes(monkeypatch) -> list[tuple[int, int, int]]:
    shapes: list[tuple[int, int, int]] = []
    real = folder._decode_all

    def counting(pool, paths, shape, *args):
        shapes.append(shape)
        return real(pool, paths, shape, *args)

    monkeypatch.setattr(folder, "_decode_all", counting)
    return shapes


def test_one_decode_pass_when_the_sampled_shape_is_right(tmp_path, monkeypatch):
    passes = _count_passes(monkeypatch)
    _load(_tree(tmp_path / "d"))
    assert passes == [(3, 10, 12)]


def test_wrong_guess_from_the_sample_decodes_again(tmp_path, monkeypatch):
    # the guess samples train only: a colour image in test makes the whole set RGB after all
    for i in range(3):
        _save(tmp_path / "train" / "a" / f"{i}.png", _gray(10 * i))
    _save(tmp_path / "test" / "a" / "colour.png", Image.new("RGB", (12, 10), (1, 2, 3)))
    passes = _count_passes(monkeypatch)
    ds = _load(tmp_path)
    assert passes == [(1, 10, 12), (3, 10, 12)]
    assert ds.train.images.shape[1] == 3 and (ds.train.images[2] == 20).all()
    assert ds.test.images[0, :, 0, 0].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------- bad images


def _with_corrupt(root: Path) -> Path:
    _tree(root, per_class=5)
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    return bad


def test_corrupt_image_stops_naming_the_file(tmp_path):
    bad = _with_corrupt(tmp_path / "d")
    with pytest.raises(FewLabelsError, match="broken.png") as err:
        _load(tmp_path / "d")
    assert str(bad) in str(err.value) and "--bad-images skip" in str(err.value)


def test_corrupt_image_skipped_with_count(tmp_path):
    _with_corrupt(tmp_path / "d")
    truncated = tmp_path / "d" / "fox" / "cut.jpg"
    data = (tmp_path / "d" / "fox" / "0.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header fine, pixels missing: fails only when decoded
    with pytest.warns(UserWarning, match=r"Skipped 2 unreadable image\(s\)") as record:
        ds = _load(tmp_path / "d", bad_images="skip")
    assert len(ds.train) + len(ds.test) == 15
    assert any("broken.png" in str(w.message) and "cut.jpg" in str(w.message) for w in record)
    assert not any("broken" in p for p in ds.train.paths + ds.test.paths)


def test_a_file_failing_only_on_the_second_pass_still_stops(tmp_path, monkeypatch):
    for i in range(3):
        _save(tmp_path / "train" / "a" / f"{i}.png", _gray(10 * i))
        _save(tmp_path / "train" / "b" / f"{i}.png", _gray(10 * i))
    _save(tmp_path / "test" / "a" / "colour.png", Image.new("RGB", (12, 10), (1, 2, 3)))  # forces a second pass
    real = folder._decode_all

    def failing_second(pool, paths, shape, *args):
        images, headers = real(pool, paths, shape, *args)
        if shape[0] == 3:
            headers[1] = "OSError: decoder failed"
        return images, headers

    monkeypatch.setattr(folder, "_decode_all", failing_second)
    with pytest.raises(FewLabelsError, match=r"1\.png: OSError: decoder failed"):
        _load(tmp_path)


def test_a_class_left_empty_by_skip_is_named(tmp_path):
    _tree(tmp_path / "d", per_class=3, classes=("cat", "dog"))
    _save(tmp_path / "d" / "eel" / "0.png", _gray(1)).write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="Skipped 1"), pytest.raises(FewLabelsError, match="class eel could be read"):
        _load(tmp_path / "d", bad_images="skip")


def test_sizes_where_scaling_rounds_past_the_edge_decode(tmp_path):
    # w / (w / w0) can exceed w0 by one ulp: PIL refused such a resize box ("box offset can't be negative")
    for src in (47, 49, 98, 188, 196, 1500):
        path = _save(tmp_path / f"{src}.png", _rgb(src, (src, src)))
        for dst in (24, 32):
            arr, header = folder.decode_image(path, (3, dst, dst))
            assert arr.shape == (3, dst, dst) and header[:2] == (src, src)


def test_symlink_loop_is_followed_once(tmp_path):
    _tree(tmp_path / "d", per_class=5)
    (tmp_path / "d" / "cat" / "again").symlink_to(tmp_path / "d" / "cat")
    elsewhere = _tree(tmp_path / "more", per_class=2, classes=("cat",))
    (tmp_path / "d" / "dog" / "extra").symlink_to(elsewhere / "cat")  # a link to other images is still followed
    files = folder.list_folder(tmp_path / "d")
    per_class = np.bincount(files.labels["train"])
    assert per_class.tolist() == [5, 7, 5]


def test_loose_images_beside_the_class_folders_are_reported(tmp_path):
    _tree(tmp_path / "d", per_class=3)
    _save(tmp_path / "d" / "stray.png", _gray(3))
    with pytest.warns(UserWarning, match=r"Ignored 1 image\(s\) directly in .*stray\.png"):
        folder.list_folder(tmp_path / "d")


def test_float_and_32_bit_images_keep_their_brightness(tmp_path):
    f01 = _save(tmp_path / "f.tif", Image.fromarray(np.full((10, 12), 0.5, np.float32), "F"))
    i255 = _save(tmp_path / "i.tif", Image.fromarray(np.full((10, 12), 128, np.int32), "I"))
    i16 = _save(tmp_path / "w.png", Image.fromarray(np.full((10, 12), 40000, np.uint16)))
    assert int(folder.decode_image(f01, (1, 10, 12))[0].mean()) == 128
    assert int(folder.decode_image(i255, (1, 10, 12))[0].mean()) == 128
    assert int(folder.decode_image(i16, (1, 10, 12))[0].mean()) == 40000 >> 8


def test_bad_images_option_is_checked(tmp_path):
    with pytest.raises(FewLabelsError, match="bad_images"):
        _load(_tree(tmp_path / "d"), bad_images="ignore")


# ---------------------------------------------------------------------------------------------------- parallel


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    root = _tree(tmp_path / "p", per_class=12)
    _save(root / "cat" / "odd.png", _rgb(5, (30, 16)))
    with pytest.warns(UserWarning, match="1 of 37 images"):
        serial = folder.decode_folder(folder.list_folder(root), image_size=None, bad_images="stop", progress=False,
                                      workers=1)
    monkeypatch.setattr(folder, "PARALLEL_MIN_FILES", 0)
    with pytest.warns(UserWarning, match="1 of 37 images"):
        parallel = folder.decode_folder(folder.list_folder(root), image_size=None, bad_images="stop",
                                        progress=False, workers=2)
    assert torch.equal(serial["train"].images, parallel["train"].images)
    assert serial["train"].paths == parallel["train"].paths


# ---------------------------------------------------------------------------------------------------- cache


def _count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = folder.decode_folder

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(folder, "decode_folder", counting)
    return calls


def test_cache_hit_skips_decoding(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    first = _load(root, cache_dir=tmp_path / "c")
    assert first.info["cache_hit"] is False

    def fail(*args, **kw):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folder, "decode_folder", fail)
    second = _load(root, cache_dir=tmp_path / "c")
    assert second.info["cache_hit"] is True
    assert torch.equal(first.train.images, second.train.images) and first.train.paths == second.train.paths
    assert torch.equal(first.test.labels, second.test.labels) and first.mean == second.mean


def test_cache_invalidated_by_added_or_modified_file(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    _load(root, cache_dir=tmp_path / "c")
    calls = _count_decodes(monkeypatch)
    _save(root / "cat" / "new.png", _rgb(42))
    added = _load(root, cache_dir=tmp_path / "c")
    assert calls == [1] and len(added.train) + len(added.test) == 16
    _save(root / "cat" / "new.png", _rgb(43))
    os.utime(root / "cat" / "new.png", ns=(1, 1))  # a different mtime, whatever the clock resolution
    _load(root, cache_dir=tmp_path / "c")
    assert calls == [1, 1]
    _load(root, cache_dir=tmp_path / "c", image_size=6)  # other settings: another entry
    assert calls == [1, 1, 1]
    entries = list((tmp_path / "c").glob("*/*"))
    assert len(entries) == 2  # the stale entry of the same settings was removed


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    root = _tree(tmp_path / "d")
    first = _load(root, cache_dir=tmp_path / "c").train.images.clone()  # the entry's images are memory-mapped:
    (tensor_file,) = (tmp_path / "c").glob("*/*/train.safetensors")  # reading them after the file is cut short in
    tensor_file.write_bytes(tensor_file.read_bytes()[:100])  # place would be a bus error (fewlabels only replaces)
    calls = _count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="could not be loaded"):
        again = _load(root, cache_dir=tmp_path / "c")
    assert calls == [1] and torch.equal(again.train.images, first)
    meta = next((tmp_path / "c").glob("*/*/meta.json"))
    meta.write_text("{not json")
    with pytest.warns(UserWarning, match="could not be loaded"):
        _load(root, cache_dir=tmp_path / "c")
    assert calls == [1, 1]
    assert json.loads(meta.read_text())["format"] == cache.CACHE_FORMAT


def test_cache_default_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path / "envcache"))
    _load(_tree(tmp_path / "d"))
    assert list((tmp_path / "envcache").glob("d-*/*/meta.json"))


# ---------------------------------------------------------------------------------------------------- torchvision


def _online(host: str = "www.cs.toronto.edu") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_torchvision_source_offline_fails_fast_with_where_to_put_files(tmp_path, monkeypatch):
    if _online():
        pytest.skip("this machine is online: the offline failure cannot be tested without a 170 MB download")
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 5.0)  # a firewall that drops packets fails in 5 s too
    start = time.perf_counter()
    with pytest.raises(FewLabelsError) as err:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert time.perf_counter() - start < 30
    message = str(err.value)
    assert "Could not download cifar10" in message and str(tmp_path) in message and "cifar-10-batches-py" in message
    assert "image folder" in message


def test_torchvision_source_missing_without_download(tmp_path):
    with pytest.raises(FewLabelsError, match=r"not in .*MNIST/raw.*download=True"):
        load_dataset("mnist", root=tmp_path, download=False)


def _fake_cifar10(root: Path, per_batch: int = 2) -> np.ndarray:
    """CIFAR-10's python batches with random pixels; returns the training pixels as (N, 3, 32, 32)."""
    import pickle

    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        train += [data] if name != "test_batch" else []
        labels = rng.integers(0, 10, per_batch).tolist()
        (batches / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return np.concatenate(train).reshape(-1, 3, 32, 32)


def test_torchvision_arrays_become_nchw_uint8(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    pixels = _fake_cifar10(tmp_path)
    # the fake files cannot match torchvision's MD5s: accept them
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert ds.train.images.shape == (10, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert np.array_equal(ds.train.images.numpy(), pixels) and ds.train.images.is_contiguous()
    assert len(ds.test) == 2 and ds.classes[0] == "airplane" and ds.mean == (0.4914, 0.4822, 0.4465)
    resized = load_dataset("cifar10", root=tmp_path, download=False, image_size=16)
    assert resized.train.images.shape == (10, 3, 16, 16)


def test_a_constant_channel_gets_a_std_of_one_grey_level_not_zero():
    """A channel that never changes would be divided by 0 and train on NaN (now a stopped run)."""
    from fewlabels.data.folder import channel_stats

    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    assert std[1] == std[2] == round(1 / 255, 4) and std[0] > 0.2 and mean[2] == 0.0


def test_a_folder_link_out_of_its_class_folder_is_reported_not_followed(tmp_path):
    """Issue 28, item 8: `cat/all -> ..` inside a class folder labelled every other class's images as cat. It stops
    with the link named, or with --bad-images skip is left out and reported; links inside the class tree and link
    cycles are still fine."""
    import warnings

    from PIL import Image

    from fewlabels.data.folder import list_folder
    from fewlabels.errors import FewLabelsError

    root = tmp_path / "d"
    for c in ("cat", "dog"):
        (root / c / "sub").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / "sub" / f"{i}.png")
    (root / "cat" / "inside").symlink_to(root / "cat" / "sub")  # the same images again: followed once
    (root / "cat" / "sub" / "loop").symlink_to(root / "cat")  # a cycle: not followed
    files = list_folder(root)
    assert len(files.paths["train"]) == 6
    (root / "cat" / "all").symlink_to(root)  # out of the class folder: dog's images would become cats
    with pytest.raises(FewLabelsError, match=r"cat/all links to .* outside its class folder .*labelled cat.*"
                                             r"--bad-images skip"):
        list_folder(root)
    files = list_folder(root, "skip")
    assert len(files.paths["train"]) == 6 and any("cat/all" in f for f in files.ignored)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from fewlabels.data.folder import _warn_ignored
        _warn_ignored(files)
    assert any("folder links out of their class folder" in str(x.message) for x in w)

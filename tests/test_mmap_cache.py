"""Larger than memory: a decoded folder or pool is written to the cache in chunks and read back memory-mapped, so its
images live in the page cache (file-backed, droppable) rather than in the process's own (anonymous) memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.data import cache

N, SIZE = 3000, 64  # 3000 x 3 x 64 x 64 = 35 MiB decoded


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
    (root / "unlabelled").mkdir()
    for i in range(N):
        img = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        if i < 200:
            img.save(root / "train" / ("a", "b")[i % 2] / f"{i}.png")
        else:
            img.save(root / "unlabelled" / f"{i}.png")
    return root


SCRIPT = textwrap.dedent("""
    import json, sys
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    import torch
    from fewlabels.data.pool import load_pool
    before = anon()
    pool = load_pool(sys.argv[1], (3, 64, 64), cache_dir=sys.argv[2], progress=False, workers=1, classes=["a", "b"])
    total = int(pool.images.sum(dtype=torch.int64))  # every image read
    print(json.dumps({"grew_mb": anon() - before, "n": len(pool), "total": total}))
""")


def _anon_growth(folder, cache_dir) -> dict:
    import json
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), str(cache_dir)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssAnon from /proc/self/status")
def test_a_pool_is_decoded_and_loaded_without_holding_it_in_memory(photo_folder, tmp_path):
    decoded_mb = (N - 200) * 3 * SIZE * SIZE / 2**20  # 33 MiB
    cold = _anon_growth(photo_folder / "unlabelled", tmp_path / "c")  # decoded through a memory-mapped scratch file
    warm = _anon_growth(photo_folder / "unlabelled", tmp_path / "c")  # loaded from the cache, memory-mapped
    assert cold["n"] == warm["n"] == N - 200 and cold["total"] == warm["total"]
    # a few 32 MB-bounded chunks in flight while decoding; nothing of the size of the pool once it is loaded
    assert warm["grew_mb"] < decoded_mb / 3, warm
    assert cold["grew_mb"] < decoded_mb, cold


def test_split_files_round_trip_rows_and_read_back_copy_on_write(tmp_path):
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(50)
    rows = torch.tensor([7, 3, 3, 49, 0])
    cache._write_split(tmp_path / "s.safetensors", images, labels, rows)
    got, lab = cache._read_split(tmp_path / "s.safetensors")
    assert torch.equal(got, images[rows]) and torch.equal(lab, labels[rows])
    from safetensors.torch import load_file  # a standard safetensors file
    assert torch.equal(load_file(tmp_path / "s.safetensors")["images"], images[rows])
    got[0] = 0  # copy-on-write: the file keeps its bytes
    assert torch.equal(cache._read_split(tmp_path / "s.safetensors")[0], images[rows])
    (tmp_path / "t.safetensors").write_bytes((tmp_path / "s.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        cache._read_split(tmp_path / "t.safetensors")


def test_large_gathers_go_to_a_memory_mapped_scratch_file(monkeypatch, tmp_path):
    from fewlabels.data import imageset

    made = []
    real = imageset.scratch
    monkeypatch.setenv("FEWLABELS_CACHE", str(tmp_path))
    monkeypatch.setattr(imageset, "scratch", lambda *a, **k: made.append(a) or real(*a, **k))
    monkeypatch.setattr(imageset, "IN_MEMORY_MB", 1e-6)  # 1 byte: everything here is "large"
    monkeypatch.setattr(imageset, "_CHUNK_BYTES", 100)  # several chunks per part
    a = torch.randint(0, 256, (40, 1, 5, 5), dtype=torch.uint8)
    b = torch.randint(0, 256, (30, 1, 5, 5), dtype=torch.uint8)
    rows = torch.tensor([29, 0, 5, 5, 17])
    out = imageset.gather([(a, None), (b, rows)])
    assert len(made) == 1 and torch.equal(out, torch.cat([a, b[rows]]))
    s = imageset.ImageSet(a, torch.arange(40) % 3, ["x", "y", "z"]).subset(torch.tensor([3, 1, 39]))
    assert torch.equal(s.images, a[[3, 1, 39]]) and s.labels.tolist() == [0, 1, 0] and len(made) == 2
    assert list((tmp_path / "scratch").iterdir()) == []  # unlinked at once: nothing left behind


def test_labelling_a_large_pool_resumes_from_its_last_saved_piece(monkeypatch, tmp_path):
    from fewlabels.data.imageset import ImageSet
    from fewlabels.methods import pseudolabel as pl

    monkeypatch.setattr(pl, "POOL_CHUNK", 100)
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    meta = {"mean": [0.5], "std": [0.25]}
    pool = ImageSet(torch.randint(0, 256, (350, 1, 4, 4), dtype=torch.uint8), torch.full((350,), -1), ["a", "b", "c"])
    whole = pl.pool_logits(teacher, meta, pool, device=torch.device("cpu"))
    calls = []
    real = pl.predict_logits

    def interrupted(model, images, *a, **k):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while labelling the third piece
        return real(model, images, *a, **k)

    monkeypatch.setattr(pl, "predict_logits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pl.pool_logits(teacher, meta, pool, device=torch.device("cpu"), resume_in=tmp_path / "partial")
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == [
        "logits-000000000000.safetensors", "logits-000000000100.safetensors"]
    calls.clear()
    monkeypatch.setattr(pl, "predict_logits", lambda m, images, *a, **k: calls.append(len(images)) or real(
        m, images, *a, **k))
    again = pl.pool_logits(teacher, meta, pool, device=torch.device("cpu"), resume_in=tmp_path / "partial")
    assert calls == [100, 50], "only the pieces not saved are labelled again"
    torch.testing.assert_close(again, whole)


def test_an_empty_split_is_cached_and_read_back(tmp_path):
    """A split with no images (e.g. a folder without test images) was written, then failed to load on every run
    ('both buffer length (0) and count (-1) must not be 0') and was decoded again."""
    cache._write_split(tmp_path / "e.safetensors", torch.zeros((0, 3, 8, 8), dtype=torch.uint8),
                       torch.zeros(0, dtype=torch.int64), None)
    images, labels = cache._read_split(tmp_path / "e.safetensors")
    assert images.shape == (0, 3, 8, 8) and labels.shape == (0,) and labels.dtype == torch.int64

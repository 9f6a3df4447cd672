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

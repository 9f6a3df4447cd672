"""`fewlabels suggest`: ranking rules, k-center greedy, the CSV it writes, and the command line end to end."""

import csv
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fewlabels
from fewlabels.cli import main
from fewlabels.data.pool import list_pool
from fewlabels.errors import FewLabelsError
from fewlabels.methods.suggest import COLUMNS, kcenter_greedy, suggest, uncertainty

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 220)}


def _image(path, rgb, rng, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-40, 40, size=(size, size, 3))
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A cnn-tiny run trained for one epoch on 3 colour classes at 16x16 (train/<class>/), and a flat folder of 12
    other images, some of them mixtures of two colours (the model is unsure of those)."""
    base = tmp_path_factory.mktemp("suggest")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(8):
            _image(base / "data" / "train" / name / f"{i}.png", rgb, rng)
    colours = list(COLOURS.values())
    for i in range(12):
        a, b = colours[i % 3], colours[(i + 1) % 3]
        w = (i % 4) / 4
        _image(base / "pool" / f"u{i:02d}.png", tuple(int(w * x + (1 - w) * y) for x, y in zip(a, b)), rng)
    fewlabels.train(data=str(base / "data"), model="cnn-tiny", epochs=1, batch_size=16, min_steps_per_epoch=4,
                    hflip=False, out=str(base / "run"), cache_dir=str(base / "cache"), quiet=True)
    return base


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------------------------------------------- scores


def test_uncertainty_of_known_logits():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0]])
    pred, conf, margin, entropy = uncertainty(p.log())
    assert pred.tolist() == [0, 0, 0]
    assert torch.allclose(conf, torch.tensor([0.7, 0.4, 1.0]), atol=1e-6)
    assert torch.allclose(margin, torch.tensor([0.5, 0.05, 1.0]), atol=1e-6)
    expected = [-sum(q * math.log(q) for q in row if q > 0) for row in p.tolist()]
    assert torch.allclose(entropy, torch.tensor(expected), atol=1e-6)  # a zero probability adds 0, not NaN


def test_kcenter_greedy_picks_the_farthest_point_each_time():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    # row 0 first; then 20, the farthest; then 10 (100 from 0 and from 20); then 2 (4 from 0, 11 is 1 from 10)
    assert kcenter_greedy(x, 4, first=0).tolist() == [0, 5, 3, 2]
    # from labelled points at 0, 1 and 2 (not picked): 20 first, then 11 (81 from 2 and from 20; 10 is 64 from 2)
    assert kcenter_greedy(x, 2, centers=torch.tensor([[0.0], [1.0], [2.0]])).tolist() == [5, 4]
    # three far-apart clusters of four points: the first three picks cover all three clusters
    rng = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(4, 8, generator=rng) * 0.01 + c for c in (0.0, 5.0, -5.0)])
    picks = kcenter_greedy(clusters, 3, first=1, chunk=3).tolist()
    assert sorted(p // 4 for p in picks) == [0, 1, 2]
    # duplicates and a budget larger than the set: every row once, never a repeat
    dup = torch.zeros(5, 2)
    assert sorted(kcenter_greedy(dup, 9, centers=torch.zeros(2, 2)).tolist()) == [0, 1, 2, 3, 4]


def test_kcenter_chunked_distances_match_unchunked():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(70, 16, generator=g), dim=1)
    assert kcenter_greedy(x, 20, centers=c, chunk=32).tolist() == kcenter_greedy(x, 20, centers=c,
                                                                                  chunk=4096).tolist()


# ---------------------------------------------------------------------------------------------------- suggest


@pytest.mark.parametrize("strategy", ["margin", "entropy", "random", "kcenter"])
def test_each_strategy_suggests_distinct_pool_images(run, tmp_path, strategy):
    out = tmp_path / "s.csv"
    res = suggest(model_path=str(run / "run"), unlabelled=[str(run / "pool")], budget=5, strategy=strategy,
                  out=str(out), quiet=True)
    rows = _read(out)
    assert tuple(rows[0]) == COLUMNS
    paths = [r[1] for r in rows[1:]]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"] and all(r[6] == "" for r in rows[1:])
    assert len(set(paths)) == 5 and set(paths) <= set(list_pool(str(run / "pool")))
    assert res["suggested"] == 5 and res["pool"] == 12 and res["strategy"] == strategy
    assert [r["path"] for r in res["rows"]] == paths
    if strategy == "kcenter":  # a run folder: the walk starts from its labelled training images
        assert "labelled training images" in res["info"]["kcenter_start"]


def test_margin_ranking_matches_recomputed_margins(run, tmp_path):
    out = tmp_path / "m.csv"
    suggest(model_path=str(run / "run"), unlabelled=str(run / "pool"), budget=12, out=str(out), quiet=True)
    rows = _read(out)[1:]
    top = fewlabels.predict(model_path=str(run / "run"), inputs=[str(run / "pool")], top_k=2, quiet=True)
    margins = {r["file"]: r["top"][0]["prob"] - r["top"][1]["prob"] for r in top}
    written = [float(r[4]) for r in rows]
    assert written == sorted(written)  # smallest margin first
    assert [margins[r[1]] for r in rows] == pytest.approx(written, abs=2e-3)
    assert sorted(margins.values()) == pytest.approx(written, abs=2e-3)
    for r in rows:  # confidence and the predicted class are the model's top-1
        m = next(t for t in top if t["file"] == r[1])
        assert r[2] == m["top"][0]["class"] and float(r[3]) == pytest.approx(m["top"][0]["prob"], abs=2e-3)


def test_random_is_seeded_and_entropy_descends(run, tmp_path):
    kw = {"model_path": str(run / "run"), "unlabelled": str(run / "pool"), "budget": 6, "quiet": True}
    a = suggest(strategy="random", seed=3, out=str(tmp_path / "a.csv"), **kw)["rows"]
    b = suggest(strategy="random", seed=3, out=str(tmp_path / "b.csv"), **kw)["rows"]
    c = suggest(strategy="random", seed=4, out=str(tmp_path / "c.csv"), **kw)["rows"]
    assert [r["path"] for r in a] == [r["path"] for r in b] != [r["path"] for r in c]
    e = suggest(strategy="entropy", out=str(tmp_path / "e.csv"), **kw)["rows"]
    assert [r["entropy"] for r in e] == sorted((r["entropy"] for r in e), reverse=True)
    with pytest.raises(FewLabelsError, match="--seed only seeds --strategy random"):
        suggest(strategy="margin", seed=3, out=str(tmp_path / "f.csv"), **kw)


def test_kcenter_from_a_bare_checkpoint_starts_at_the_most_uncertain(run, tmp_path):
    bare = tmp_path / "model"
    shutil.copytree(run / "run" / "checkpoints" / "best", bare)
    res = suggest(model_path=str(bare), unlabelled=str(run / "pool"), budget=3, strategy="kcenter",
                  out=str(tmp_path / "k.csv"), quiet=True)
    margin = suggest(model_path=str(bare), unlabelled=str(run / "pool"), budget=1, out=str(tmp_path / "m.csv"),
                     quiet=True)
    assert "most uncertain image by margin" in res["info"]["kcenter_start"]
    assert res["rows"][0]["path"] == margin["rows"][0]["path"]
    assert any("kcenter starts from the most uncertain" in n for n in res["info"]["notes"])


def test_refuses_to_overwrite_and_excludes_labelled_images(run, tmp_path):
    out = tmp_path / "s.csv"
    kw = {"model_path": str(run / "run"), "unlabelled": str(run / "pool"), "out": str(out), "quiet": True}
    first = suggest(budget=3, **kw)
    with pytest.raises(FewLabelsError, match=r"s\.csv exists already.*--overwrite"):
        suggest(budget=3, **kw)
    labelled = [r["path"] for r in first["rows"][:2]]
    (tmp_path / "done.csv").write_text("path,label\n" + "".join(f"{p},red\n" for p in labelled))
    res = suggest(budget=20, exclude=[str(tmp_path / "done.csv")], overwrite=True, **kw)
    assert res["excluded"] == 2 and res["pool"] == 10 and res["suggested"] == 10
    assert not set(labelled) & {r[1] for r in _read(out)[1:]}
    assert any("--budget 20 is more than the 10" in n for n in res["info"]["notes"])
    # the suggestions file is itself a list of paths (a manifest once the labels are filled in)
    assert list_pool(str(out)) == [r[1] for r in _read(out)[1:]]


def test_cli_end_to_end(run, tmp_path, capsys):
    suggestions = run / "run" / "suggestions.csv"
    suggestions.unlink(missing_ok=True)
    code = main(["suggest", str(run / "run"), "--unlabelled", str(run / "pool"), "--budget", "4", "--strategy",
                 "kcenter"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"wrote 4 suggestions (kcenter) from 12 unlabelled images to {suggestions}" in out
    assert _read(suggestions)[0] == list(COLUMNS) and len(_read(suggestions)) == 5
    code = main(["suggest", str(run / "run"), "--unlabelled", str(run / "pool"), "--budget", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fewlabels: error:") and "--overwrite" in err
    code = main(["suggest", str(run / "run"), "--unlabelled", str(run / "pool"), "--budget", "0", "--out",
                 str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fewlabels: error:") and "budget" in err and not (tmp_path / "x.csv").exists()
    code = main(["suggest", str(run / "run"), "--unlabelled", str(tmp_path / "missing"), "--budget", "2", "--out",
                 str(tmp_path / "y.csv")])
    assert code == 2 and "missing does not exist" in capsys.readouterr().err

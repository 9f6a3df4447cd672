"""A user's own photos: a labelled folder with unlabelled/ beside train/, a flat folder of unlabelled images, a CSV
manifest, a pretrained start for self-training, and what to label next. Every image is made here (digits 0-2 from
scikit-learn's set as 16x16 PNG files), so nothing outside the test is needed."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.cli import main
from fewlabels.data import make_split
from fewlabels.methods.pseudolabel import select

CLASSES = ("zero", "one", "two")
QUICK = ["--batch-size", "32", "--min-steps-per-epoch", "4", "--hflip", "false", "--device", "cpu"]
ROUNDS = ["--rounds", "1", "--teacher-model", "cnn-tiny", "--student-models", "cnn-tiny", "--teacher-epochs", "3",
          "--student-epochs", "2", *QUICK]


def _digits_png(folder: Path, images: np.ndarray, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(images):
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(np.kron(img * 15, np.ones((2, 2))).astype(np.uint8)).save(p)  # 8x8 → 16x16
        out.append(p)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """DIR/train/<class>/ (12 each), DIR/test/<class>/ (15 each), DIR/unlabelled/ (the rest, some in a subfolder),
    a flat folder of other unlabelled images, and a manifest of the same files."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("photos")
    data, flat = root / "mine", root / "flat"
    rows = []
    for c, name in enumerate(CLASSES):
        imgs = d.images[d.target == c]
        for p in _digits_png(data / "train" / name, imgs[:12], "l"):
            rows.append((p, name, "train"))
        for p in _digits_png(data / "test" / name, imgs[12:27], "t"):
            rows.append((p, name, "test"))
        sub = "" if c else "batch2"  # recursive search
        for p in _digits_png(data / "unlabelled" / sub, imgs[27:90], f"u{c}_"):
            rows.append((p, "", ""))
        _digits_png(flat, imgs[90:150], f"f{c}_")
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for p, label, split in rows:
            w.writerow([p.relative_to(root), label, split])
    return {"data": data, "flat": flat, "manifest": manifest, "root": root}


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _bad(args, capsys, *match):
    code, _, err = run(args, capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith("fewlabels: error:"), err
    for m in match:
        assert m in last, last
    assert "Traceback" not in err


def test_folder_with_unlabelled_beside_train(photos, tmp_path, capsys):
    out = tmp_path / "st"
    code, stdout, err = run(["selftrain", "--data", photos["data"], "--out", out, *ROUNDS], capsys)
    assert code == 0, err
    # every labelled image used (no simulated budget): 36 minus the 10% validation; the pool is what was given
    split = json.loads((out / "split.json").read_text())
    assert len(split["labelled"]) + len(split["val"]) == 36 and len(split["unlabelled"]) == 3 * 63
    assert "0 unlabelled" not in stdout and "189 unlabelled" in stdout and "45 test" in stdout
    with (out / "round1" / "pseudo_labels.csv").open() as f:
        listed = {r["path"] for r in csv.DictReader(f)}
    assert listed and all("/unlabelled/" in p and Path(p).is_file() for p in listed)  # the user's own paths
    assert any("/batch2/" in p for p in listed)
    assert "points from self-training" in stdout
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[1]["pseudo_labels"] > 0 and rounds[1].get("pl_precision") is None  # nobody knows the truth


def test_flat_unlabelled_folder_and_csv_list(photos, tmp_path, capsys):
    # a folder without unlabelled/ (the train/test part only) plus --unlabelled FLAT
    data = tmp_path / "lab"
    for split in ("train", "test"):
        for c in CLASSES:
            (data / split / c).mkdir(parents=True)
            for p in (photos["data"] / split / c).iterdir():
                (data / split / c / p.name).write_bytes(p.read_bytes())
    listing = tmp_path / "pool.tsv"
    files = sorted(photos["flat"].iterdir())
    listing.write_text("".join(f"{p}\n" for p in files[:40]))
    teacher = tmp_path / "teacher"
    code, _, err = run(["train", "--data", data, "--model", "cnn-tiny", "--epochs", "3", "--out", teacher, *QUICK],
                       capsys)
    assert code == 0, err
    out = tmp_path / "pl"
    code, stdout, err = run(["pseudolabel", "--teacher", teacher, "--data", data, "--unlabelled",
                             f"{photos['flat']},{listing}", "--out", out], capsys)
    assert code == 0, err
    split = json.loads((out / "split.json").read_text())
    assert len(split["unlabelled"]) == len(files)  # the CSV's 40 are the folder's too: each image once
    teacher_split = json.loads((teacher / "split.json").read_text())
    assert split["labelled"] == teacher_split["labelled"] and split["val"] == teacher_split["val"]
    with (out / "pseudo_labels.csv").open() as f:
        assert all(Path(r["path"]).parent == photos["flat"] for r in csv.DictReader(f))

    # selftrain from the finished teacher: round 0 is not retrained, the teacher's split is reused
    st = tmp_path / "st"
    code, stdout, err = run(["selftrain", "--data", data, "--unlabelled", photos["flat"], "--teacher", teacher,
                             "--out", st, "--rounds", "1", "--student-models", "cnn-tiny", "--student-epochs", "2",
                             *QUICK], capsys)
    assert code == 0, err
    rounds = json.loads((st / "rounds.json").read_text())
    teacher_res = json.loads((teacher / "results.json").read_text())
    assert rounds[0]["teacher"] == str(teacher) and rounds[0]["train_images"] == 0
    assert rounds[0]["test_acc"] == pytest.approx(teacher_res["test_acc"])
    assert json.loads((st / "split.json").read_text())["labelled"] == teacher_split["labelled"]
    assert "the split of" in stdout
    _bad(["selftrain", "--data", data, "--unlabelled", photos["flat"], "--teacher", teacher, "--teacher-epochs", "5",
          "--out", tmp_path / "x"], capsys, "--teacher-epochs")
    _bad(["selftrain", "--data", data, "--teacher", tmp_path / "nothing", "--out", tmp_path / "y"], capsys,
         "nothing")
    # a label budget that would put the teacher's training images into validation is refused
    _bad(["selftrain", "--data", data, "--unlabelled", photos["flat"], "--teacher", teacher, "--labels-per-class",
          "5", "--split-seed", "3", "--out", tmp_path / "z"], capsys, "training images of")

    # what to label next: the most uncertain pool images by the self-trained model, ready to be labelled
    code, stdout, err = run(["suggest", st, "--unlabelled", photos["flat"], "--budget", "7", "--strategy", "kcenter"],
                            capsys)
    assert code == 0, err
    with (st / "suggestions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and {r["label"] for r in rows} == {""} and all(Path(r["path"]).is_file() for r in rows)
    assert all(r["predicted"] in CLASSES for r in rows)

    # a pretrained start: the students start from the teacher run's weights (its model, as no --student-models)
    st2 = tmp_path / "st2"
    code, stdout, err = run(["selftrain", "--data", data, "--unlabelled", photos["flat"], "--teacher-pretrained",
                             teacher, "--student-pretrained", teacher, "--rounds", "1", "--teacher-epochs", "2",
                             "--student-epochs", "1", "--out", st2, *QUICK], capsys)
    assert code == 0, err
    rounds = json.loads((st2 / "rounds.json").read_text())
    assert [r["model"] for r in rounds] == ["cnn-tiny", "cnn-tiny"] and rounds[1]["pretrained"] == str(teacher)


def test_manifest_as_data(photos, tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, err = run(["selftrain", "--data", photos["manifest"], "--out", out, *ROUNDS], capsys)
    assert code == 0, err
    split = json.loads((out / "split.json").read_text())
    assert len(split["unlabelled"]) == 189 and len(split["labelled"]) + len(split["val"]) == 36
    assert "45 test" in stdout
    # without a split column: no test rows, so a stratified 20% of the labelled rows is the test split
    plain = tmp_path / "plain.tsv"
    lines = [ln.split(",") for ln in photos["manifest"].read_text().splitlines()[1:]]
    plain.write_text("".join(f"{photos['root'] / p}\t{label}\n" for p, label, split in lines if split != "test"))
    code, stdout, err = run(["train", "--data", plain, "--model", "cnn-tiny", "--epochs", "1", "--out",
                             tmp_path / "t", *QUICK], capsys)
    assert code == 0, err
    assert "6 test" in stdout  # 20% of 12 per class: 2 per class held out


@pytest.mark.parametrize("rows, match", [
    (["path,label", "a.png,cat", "missing.png,dog"], ["line 3", "missing.png"]),
    (["path,label,split", "a.png,cat,train", "b.png,dog,holdout"], ["line 3", "holdout"]),
    (["path,label,split", "a.png,cat,train", "b.png,dog,test"], ["line 3", "'dog'", "not in train"]),
    (["path,label,split", "a.png,cat,train", "b.png,,test"], ["line 3", "needs a label"]),
    (["path,label", "a.png,cat", "a.png,dog"], ["line 3", "line 2"]),
    (["path,label", "a.png,", "b.png,"], ["no labelled training rows"]),
    (["file,kind", "a.png,cat"], ["no label column"]),
])
def test_bad_manifest_rows(tmp_path, capsys, rows, match):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    m = tmp_path / "m.csv"
    m.write_text("\n".join(rows) + "\n")
    _bad(["train", "--data", m, "--out", tmp_path / "o"], capsys, *match)


def test_empty_pool_names_every_way_to_give_one(tmp_path, capsys):
    _bad(["selftrain", "--data", "digits", "--out", tmp_path / "o", "--teacher-epochs", "1"], capsys, "--unlabelled")


def test_split_keeps_truly_unlabelled_images_out_of_validation_and_budget():
    labels = torch.tensor([0, 1] * 20 + [-1] * 30)
    s = make_split(labels, 2, val=0.25, seed=0)
    assert len(s.val) == 10 and len(s.labelled) == 30 and s.unlabelled.tolist() == list(range(40, 70))
    b = make_split(labels, 2, labels_per_class=5, val=4, seed=0)
    assert len(b.labelled) == 10 and set(range(40, 70)) <= set(b.unlabelled.tolist())
    assert (labels[b.val] >= 0).all() and (labels[b.labelled] >= 0).all()
    # the same split as before for data without unlabelled images
    known = torch.tensor([0, 1, 2] * 10)
    assert make_split(known, 3, labels_per_class=3, seed=1).labelled.tolist() == make_split(
        known, 3, labels_per_class=3, seed=1).labelled.tolist()


def test_pseudo_label_balance_to_the_labelled_prior():
    probs = torch.tensor([[0.9, 0.1]] * 60 + [[0.2, 0.8]] * 40)
    uniform = select(probs, threshold=0.5)
    assert torch.bincount(torch.cat([probs[uniform].argmax(1)]), minlength=2).tolist() == [50, 50]
    prior = select(probs, threshold=0.5, prior=torch.tensor([3.0, 1.0]))  # labelled images 3:1
    assert torch.bincount(probs[prior].argmax(1), minlength=2).tolist() == [75, 25]


def test_evaluate_decodes_at_the_runs_own_size_and_train_names_what_it_scored(photos, tmp_path, capsys):
    data = tmp_path / "big"
    for c in CLASSES:  # 32x32 files; the run is trained at --image-size 16
        (data / c).mkdir(parents=True)
        for p in sorted((photos["data"] / "train" / c).iterdir()):
            Image.open(p).resize((32, 32)).save(data / c / p.name)
    run_dir = tmp_path / "r"
    code, stdout, err = run(["train", "--data", data, "--image-size", "16", "--model", "cnn-tiny", "--epochs", "1",
                             "--out", run_dir, *QUICK], capsys)
    assert code == 0, err
    assert "test accuracy" in stdout and "validation accuracy" in stdout
    code, stdout, err = run(["evaluate", run_dir, "--data", data], capsys)
    assert code == 0, err
    assert "macro" in stdout.lower()


def test_val_and_test_folders_name_the_splits(photos, tmp_path, capsys):
    """--val DIR and --test DIR: class folders decoded at the training images' size, used as the validation and test
    images (the labelled images all train); unknown classes, training images and missing folders are refused."""
    from sklearn.datasets import load_digits

    d = load_digits()
    val = tmp_path / "val"
    for c, name in enumerate(CLASSES):
        _digits_png(val / name, d.images[d.target == c][150:158], "v")
    out = tmp_path / "t"
    code, stdout, err = run(["train", "--data", photos["data"] / "train", "--val", val, "--test",
                             photos["data"] / "test", "--model", "cnn-tiny", "--epochs", "1", "--out", out, *QUICK],
                            capsys)
    assert code == 0, err
    assert f"36 labelled, 24 validation (from {val})" in stdout and "45 test" in stdout, stdout
    res = json.loads((out / "results.json").read_text())
    assert res["report"]["on"] == "test" and sum(m["support"] for m in res["report"]["per_class"].values()) == 45
    split = json.loads((out / "split.json").read_text())
    assert len(split["labelled"]) == 36 and not split["val"]
    (val / "three").mkdir()
    _digits_png(val / "three", d.images[d.target == 3][:2], "x")
    _bad(["train", "--data", photos["data"] / "train", "--val", val, "--out", tmp_path / "u", *QUICK], capsys,
         "--val", "not training classes: three")
    _bad(["train", "--data", photos["data"], "--test", photos["data"] / "train", "--out", tmp_path / "w", *QUICK],
         capsys, "--test", "36 of its images are also training images")
    _bad(["train", "--data", photos["data"], "--test", tmp_path / "nowhere", "--out", tmp_path / "x", *QUICK],
         capsys, "no such folder")


def test_overlap_with_the_source_run_is_found_by_file_across_layouts(photos, tmp_path, capsys):
    """A run that starts from another one may not validate or test on that run's training images, whatever the
    folder layout: the source run's split.json lists its labelled files. --allow-overlap lets it through and the
    results record it."""
    src = tmp_path / "src"
    code, _, err = run(["train", "--data", photos["data"], "--model", "cnn-tiny", "--epochs", "1", "--out", src,
                        *QUICK], capsys)
    assert code == 0, err
    theirs = json.loads((src / "split.json").read_text())["labelled_paths"]
    assert len(theirs) == len(json.loads((src / "split.json").read_text())["labelled"])
    # the same files, listed in a manifest: another --data, so the source's split cannot be reused; the new
    # validation images (another split seed) are drawn from the labelled rows, the source's training images
    args = ["transfer", "--pretrained", src, "--model", "cnn-tiny", "--data", photos["manifest"], "--split-seed", "1",
            "--labels-per-class", "4", "--epochs", "1",
            *QUICK]
    _bad([*args, "--out", tmp_path / "t1"], capsys, "validation images of this run were training images of",
         "--allow-overlap")
    code, stdout, err = run([*args, "--allow-overlap", "--out", tmp_path / "t2"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "t2" / "results.json").read_text())
    assert res["overlap_with_source"]["validation"] > 0 and "not a held-out figure" in stdout


def test_a_linear_probe_as_the_teacher(photos, tmp_path, capsys):
    """The cheap pretrained start: `transfer --mode probe` (a frozen backbone, a linear head on cached features)
    from a model trained elsewhere, then `selftrain --teacher` that run as round 0 on the user's folder."""
    src = tmp_path / "src"
    code, _, err = run(["train", "--data", "digits", "--model", "cnn-tiny", "--epochs", "2", "--out", src, *QUICK],
                       capsys)
    assert code == 0, err
    probe = tmp_path / "probe"
    code, stdout, err = run(["transfer", "--mode", "probe", "--pretrained", src, "--model", "cnn-tiny", "--data",
                             photos["data"], "--probe-epochs", "5", "--out", probe, *QUICK], capsys)
    assert code == 0, err
    out = tmp_path / "st"
    code, stdout, err = run(["selftrain", "--data", photos["data"], "--teacher", probe, "--rounds", "1",
                             "--student-models", "cnn-tiny", "--student-epochs", "2", "--out", out, *QUICK], capsys)
    assert code == 0, err
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[0]["test_acc"] is not None and rounds[1]["pseudo_labels"] > 0
    assert json.loads((out / "split.json").read_text()) == json.loads((probe / "split.json").read_text())

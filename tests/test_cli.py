"""End to end on digits through the command line: train → evaluate → predict → kill and resume, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewlabels.cli import main

FAST = ["--epochs", "3", "--min-steps-per-epoch", "8", "--batch-size", "64", "--model", "cnn-tiny", "--hflip", "false",
        "--labels-per-class", "10"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", "--data", "digits", "--out", str(run), *FAST]) == 0
    return run


def test_train_writes_run_folder(trained):
    for f in ["config.yaml", "split.json", "metrics.jsonl", "results.json", "learning_curve.png",
              "checkpoints/best/model.safetensors", "checkpoints/best/model.json",
              "checkpoints/last/train_state.pt"]:
        assert (trained / f).is_file(), f
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_acc", "test_acc", "lr"} <= set(rows[-1])
    meta = json.loads((trained / "checkpoints/best/model.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["model"] == "cnn-tiny"
    split = json.loads((trained / "split.json").read_text())
    assert len(split["labelled"]) == 100
    # the command line that made the run, as it can be pasted again
    env = json.loads((trained / "environment.json").read_text())
    assert env["command"] == "fewlabels " + " ".join(["train", "--data", "digits", "--out", str(trained), *FAST])
    from fewlabels import utils
    assert utils.COMMAND_LINE == [] and "command" not in utils.environment_info()  # not left for a later Python call


def test_evaluate_and_predict(trained, tmp_path, capsys):
    code, out, _ = run_cli(["evaluate", trained, "--data", "digits", "--out", tmp_path / "e.json"], capsys)
    assert code == 0 and "accuracy" in out
    rep = json.loads((tmp_path / "e.json").read_text())
    assert len(rep["confusion_matrix"]) == 10 and sum(map(sum, rep["confusion_matrix"])) == rep["n"]
    res = json.loads((trained / "results.json").read_text())
    assert abs(rep["accuracy"] - res["test_acc"]) < 1e-6  # same model, same images, same number
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from sklearn.datasets import load_digits
    d = load_digits()
    for i in range(3):
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16)).save(imgs / f"{i}.png")
    code, out, _ = run_cli(["predict", trained, imgs, "--top-k", "2"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "file,class_1,prob_1,class_2,prob_2" and len(lines) == 4
    code, _, _ = run_cli(["predict", trained, imgs / "0.png", "--format", "json", "--top-k", "10", "--out",
                          tmp_path / "p.json"], capsys)
    rows = json.loads((tmp_path / "p.json").read_text())
    probs = [t["prob"] for t in rows[0]["top"]]
    assert code == 0 and len(rows) == 1 and len(probs) == 10
    assert abs(sum(probs) - 1) < 1e-3 and probs == sorted(probs, reverse=True)


def test_kill_and_resume(tmp_path):
    """SIGKILL mid-run, rerun the same command: it resumes from the last checkpoint and finishes."""
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "fewlabels", "train", "--data", "digits", "--out", str(run), "--epochs", "12",
           "--batch-size", "32", "--model", "cnn-tiny", "--hflip", "false", "--labels-per-class", "40"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").is_file():
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len((run / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 12, "the run should have been killed part-way"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming from" in out.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 13))


def _bad(args, capsys, match):
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1].split("\r")[-1]  # after any progress bar
    assert last.startswith("fewlabels: error:") and match in last, err
    assert "Traceback" not in err


def test_bad_inputs(tmp_path, capsys, trained):
    _bad(["train", "--data", tmp_path / "nope", "--out", tmp_path / "o"], capsys, "nope")
    _bad(["train", "--data", "digits", "--labels", "100000", "--out", tmp_path / "o"], capsys, "larger than")
    _bad(["train", "--data", "digits", "--labels", "5", "--out", tmp_path / "o"], capsys, "number of classes")
    _bad(["train", "--data", "digits", "--model", "cnn-huge", "--out", tmp_path / "o"], capsys, "cnn-huge")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    _bad(["train", "--config", cfg, "--out", tmp_path / "o"], capsys, "epochz")
    _bad(["evaluate", tmp_path / "missing-run", "--data", "digits"], capsys, "missing-run")


def test_checkpoint_for_other_classes(tmp_path, capsys, trained):
    root = tmp_path / "folder"
    for c in ["cat", "dog"]:
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16), i * 20 + (c == "dog") * 100, np.uint8)).save(root / c / f"{i}.png")
    before = (trained / "checkpoints/best/model.safetensors").read_bytes()
    _bad(["evaluate", trained, "--data", root], capsys, "the data lacks 0, 1, 2, 3, 4, 5, 6, 7, … (2 more)")
    _bad(["distill", "--teacher", trained, "--data", root, "--out", tmp_path / "d", "--epochs", "1"], capsys,
         "classes")
    assert (trained / "checkpoints/best/model.safetensors").read_bytes() == before  # nothing damaged


def test_corrupt_image_and_empty_class(tmp_path, capsys):
    root = tmp_path / "folder"
    for c in ["a", "b"]:
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((16, 16), i * 40, np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not an image")
    _bad(["train", "--data", root, "--out", tmp_path / "o"], capsys, "broken.png")
    code, _, _ = run_cli(["train", "--data", root, "--bad-images", "skip", "--out", tmp_path / "o2", "--epochs", "1",
                          "--model", "cnn-tiny", "--val", "0"], capsys)
    assert code == 0
    (root / "c").mkdir()
    _bad(["train", "--data", root, "--out", tmp_path / "o3", "--bad-images", "skip"], capsys, "c")


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for c in ["train", "evaluate", "predict", "selftrain", "pseudolabel", "distill", "transfer"]:
        assert c in out
    assert Path(__file__).exists()


def test_api_functions_survive_submodule_imports():
    """`fewlabels.train` etc. stay the command functions after the training engine's modules are imported (a
    subpackage of the same name would replace the attribute on first import)."""
    import importlib

    import fewlabels

    for mod in ("fewlabels.engine.loop", "fewlabels.engine.checkpoint", "fewlabels.methods.supervised",
                "fewlabels.models", "fewlabels.data", "fewlabels.losses"):
        importlib.import_module(mod)
    for name in ("train", "evaluate", "predict", "pseudolabel", "selftrain", "distill", "transfer", "augment_preview",
                 "probe_equivariance", "probe_fc_vs_cnn", "fit", "load_model", "create_model", "load_dataset"):
        assert callable(getattr(fewlabels, name)), name
    assert fewlabels.train.__module__ == "fewlabels.methods.supervised"


def test_train_passes_augmentation_options_and_dataset_indices(tmp_path, monkeypatch):
    """--padding, --cutout and --alternating-flip reach the augmentation pipeline, and the loop gives it each batch's
    dataset indices (which the alternating flip needs: every image is seen both ways in two consecutive epochs)."""
    import yaml

    from fewlabels.augment import Augment

    calls = []
    real_call = Augment.normalized

    def recording_call(self, x, mean, std, generator=None, epoch=0, index=None, **kw):
        calls.append((self, epoch, None if index is None else index.clone()))
        return real_call(self, x, mean, std, generator=generator, epoch=epoch, index=index, **kw)

    monkeypatch.setattr(Augment, "normalized", recording_call)
    run = tmp_path / "r"
    args = ["train", "--data", "digits", "--out", run, "--epochs", "2", "--batch-size", "50", "--model", "cnn-tiny",
            "--labels-per-class", "10", "--augment", "strong", "--padding", "1", "--cutout", "3",
            "--alternating-flip", "--hflip", "true", "--min-steps-per-epoch", "0", "--quiet"]
    assert main([str(a) for a in args]) == 0
    aug = calls[0][0]
    assert (aug.padding, aug.cutout, aug.alternating_flip, aug.hflip) == (1, 3, True, True)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["padding"] == 1 and cfg["cutout"] == 3 and cfg["alternating_flip"] is True
    assert calls and all(idx is not None for _, _, idx in calls)
    seen = {e: torch.cat([idx for _, ep, idx in calls if ep == e]).sort().values for e in (0, 1)}
    assert torch.equal(seen[0], seen[1]) and seen[0].numel() == 100  # every labelled image once per epoch


def test_train_whiten_stem_and_translate_tta(tmp_path, monkeypatch):
    """--whiten-stem runs the model's data-dependent init once, on normalised training images, before the first
    step; --tta-translate reaches every evaluation; evaluate takes --tta-translate too."""
    import yaml

    from fewlabels.models.cnn import CompactCNN

    seen_init, seen_tta = [], []
    real_init = CompactCNN.init_from_data

    def recording_init(self, x):
        seen_init.append((x.shape, x.dtype, float(x.mean()), float(x.std())))
        return real_init(self, x)

    import fewlabels.engine.loop as loop

    real_predict = loop.predict_logits

    def recording_predict(*args, **kw):
        seen_tta.append(kw.get("tta_translate"))
        return real_predict(*args, **kw)

    monkeypatch.setattr(CompactCNN, "init_from_data", recording_init)
    monkeypatch.setattr(loop, "predict_logits", recording_predict)
    run = tmp_path / "r"
    args = ["train", "--data", "digits", "--out", run, "--epochs", "2", "--batch-size", "50", "--model", "cnn-tiny",
            "--labels-per-class", "10", "--whiten-stem", "--tta-translate", "1", "--quiet"]
    assert main([str(a) for a in args]) == 0
    assert len(seen_init) == 1
    shape, dtype, mean, std = seen_init[0]
    assert shape[0] == 100 and dtype == torch.float32 and abs(mean) < 0.5 and 0.5 < std < 2  # normalised
    assert seen_tta and all(t == 1 for t in seen_tta)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["whiten_stem"] is True and cfg["tta_translate"] == 1
    out = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--data", "digits", "--tta-translate", "1", "--out", str(out)]) == 0


def test_bad_numbers_device_and_reused_out(tmp_path, capsys, trained):
    """Nonsense numbers and devices stop before any work; a run folder is never overwritten by another run."""
    _bad(["train", "--epochs", "-1", "--out", tmp_path / "o"], capsys, "--epochs) must be ≥ 1")
    _bad(["train", "--device", "foo", "--out", tmp_path / "o"], capsys, "unknown device 'foo'")
    _bad(["selftrain", "--threshold", "1.5", "--out", tmp_path / "o"], capsys, "--threshold) must be ≥ 0 and ≤ 1")
    _bad(["train", "--val", "1.5", "--out", tmp_path / "o"], capsys, "--val 1.5")
    _bad(["predict", trained, "--top-k", "0"], capsys, "top_k")
    _bad(["evaluate", trained, "--data", "digits", "--mean", "0.5"], capsys, "evaluate does not use --mean")
    # the same --out with other options, or for another command: refused, config.yaml untouched
    before = (trained / "config.yaml").read_text()
    _bad(["train", "--data", "digits", "--out", trained, *FAST[:-1], "20"], capsys, "--labels-per-class 10 → 20")
    _bad(["pseudolabel", "--teacher", trained, "--out", trained], capsys, "holds a `fewlabels train` run")
    assert (trained / "config.yaml").read_text() == before


def test_one_class_folder_and_corrupt_checkpoint_metadata(tmp_path, capsys, trained):
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16), i * 40, np.uint8)).save(root / "cat" / f"{i}.png")
    _bad(["train", "--data", root, "--out", tmp_path / "o"], capsys, "has one class (cat)")
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "checkpoints/best/model.json").write_text('{"model": "cnn-tiny", "classes": [')
    _bad(["evaluate", bad, "--data", "digits"], capsys, "model.json is unreadable")
    (bad / "checkpoints/best/model.json").write_text('{"model": "cnn-tiny"}')
    _bad(["evaluate", bad, "--data", "digits"], capsys, "lacks classes, in_chans")


def test_out_folder_with_user_files_and_a_changed_default(tmp_path, capsys, trained):
    """A folder that is not a run but holds what a run writes is refused; a run whose saved option differs from
    today's default (one the user did not set) resumes with its own value instead of being refused."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"mine": 1}')
    _bad(["train", "--data", "digits", "--out", mine, *FAST], capsys, "not a fewlabels run folder")
    assert (mine / "results.json").read_text() == '{"mine": 1}'
    import shutil
    run = tmp_path / "old"
    shutil.copytree(trained, run)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("weight_decay: 0.0005", "weight_decay: 0.001"))
    code, out, err = run_cli(["train", "--data", "digits", "--out", run, *FAST], capsys)
    assert code == 0, err
    assert "weight_decay: 0.001" in cfg.read_text()


def test_confusion_matrix_shows_whole_class_names(capsys):
    from fewlabels.methods.supervised import show_evaluation as _show_eval
    classes = ["airplane", "a_very_long_class_name_indeed", "cat"]
    cm = [[5, 1, 0], [0, 7, 2], [1, 0, 9]]
    rep = {"accuracy": 0.84, "n": 25, "on": "test", "classes": classes, "confusion_matrix": cm,
           "per_class_accuracy": dict(zip(classes, [0.83, 0.78, 0.9]))}
    _show_eval(rep)
    out = capsys.readouterr().out
    assert "a_very_long_class_name_indeed (1)" in out and "airplane (0)" in out
    lines = out.splitlines()
    head = lines[lines.index(next(ln for ln in lines if ln.startswith("confusion matrix"))) + 1]
    assert head.split() == ["0", "1", "2"]
    assert lines[-1].split()[-3:] == ["1", "0", "9"]
    _show_eval({**rep, "classes": ["a", "b", "c"], "per_class_accuracy": {"a": 1, "b": 1, "c": 1}})
    out = capsys.readouterr().out
    assert out.splitlines()[-4].split() == ["a", "b", "c"]  # short names head the columns themselves


def test_predict_decodes_like_training_and_skips_hidden_files(trained, tmp_path):
    """predict sees a file as a training folder would: EXIF orientation, alpha on black, aspect kept."""
    from fewlabels.data.folder import decode_image
    from fewlabels.engine.checkpoint import load_model
    from fewlabels.eval import predict_logits
    from fewlabels.methods.supervised import predict
    from fewlabels.utils import pick_dtype

    imgs = tmp_path / "imgs"
    (imgs / ".ipynb_checkpoints").mkdir(parents=True)
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white under fully transparent pixels: black once composited
    rgba[4:12, 12:20] = (255, 255, 255, 255)
    Image.fromarray(rgba, "RGBA").save(imgs / "wide_rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.fromarray(np.tile(np.arange(0, 240, 15, dtype=np.uint8), (24, 1))).save(imgs / "turned.jpg", exif=exif)
    (imgs / "._wide_rgba.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork: not an image
    Image.new("L", (16, 16)).save(imgs / ".ipynb_checkpoints" / "copy.png")
    rows = predict(model_path=str(trained), inputs=[str(imgs)], top_k=10, quiet=True)
    assert [Path(r["file"]).name for r in rows] == ["turned.jpg", "wide_rgba.png"]
    model, meta = load_model(trained, "cpu")
    h, w = meta["image_size"]
    ref = torch.stack([torch.from_numpy(np.array(decode_image(imgs / n, (meta["in_chans"], h, w))[0]))
                       for n in ("turned.jpg", "wide_rgba.png")])
    probs = predict_logits(model, ref, meta["mean"], meta["std"], device=torch.device("cpu"),
                           dtype=pick_dtype("auto", torch.device("cpu"))).softmax(1)
    for row, p in zip(rows, probs):
        got = {t["class"]: t["prob"] for t in row["top"]}
        assert max(abs(got[c] - float(p[i])) for i, c in enumerate(meta["classes"])) < 2e-2
    import fewlabels.methods.supervised as sup
    sup.PREDICT_CHUNK_BYTES, keep = 1, sup.PREDICT_CHUNK_BYTES  # one image per chunk: the same rows
    try:
        again = predict(model_path=str(trained), inputs=[str(imgs)], top_k=10, quiet=True)
        assert [r["file"] for r in again] == [r["file"] for r in rows]
        for a, b in zip(again, rows):
            pa, pb = ({t["class"]: t["prob"] for t in r["top"]} for r in (a, b))
            assert max(abs(pa[c] - pb[c]) for c in pb) < 2e-2
    finally:
        sup.PREDICT_CHUNK_BYTES = keep


def test_preview_reads_folders_like_training(tmp_path, capsys, monkeypatch):
    root = tmp_path / "wide"
    for c in ("a", "b"):
        for i in range(3):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 64), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "empty.png").write_bytes(b"")
    _bad(["augment", "preview", "--data", root, "--out", tmp_path / "p.png"], capsys, "--bad-images skip")
    with pytest.warns(UserWarning, match="Skipped 1"):
        code, _, _ = run_cli(["augment", "preview", "--data", root, "--bad-images", "skip", "--images", "2",
                              "--out", tmp_path / "p.png"], capsys)
    assert code == 0 and (tmp_path / "p.png").is_file()
    import fewlabels.augment as aug_pkg
    seen = []
    real = aug_pkg.build_augment
    monkeypatch.setattr(aug_pkg, "build_augment", lambda *a, **k: seen.append(k["image_size"]) or real(*a, **k))
    with pytest.warns(UserWarning, match="Skipped 1 .*empty.png"):  # a cache hit still says what was left out
        run_cli(["augment", "preview", "--data", root, "--bad-images", "skip", "--out", tmp_path / "q.png"], capsys)
    assert seen == [16]  # the height, as training uses (padding and Cutout scale with it)


def test_output_into_a_closed_pipe_is_not_a_traceback(trained, tmp_path):
    """`fewlabels predict … | head -1`: the reader goes away before the output is written."""
    img = tmp_path / "a.png"
    Image.new("L", (16, 16)).save(img)
    p = subprocess.Popen([sys.executable, "-m", "fewlabels", "predict", str(trained), str(img)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # long before the model has loaded
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and "Traceback" not in err, err


def test_outputs_never_replace_run_files_or_existing_files(trained, tmp_path, capsys):
    """evaluate/predict/augment preview --out: a file a run folder owns is never replaced (not even with
    --overwrite), an existing file only with --overwrite, a folder or a wrong kind of file is refused (issue 28,
    item 3, as reported: `evaluate RUN --out RUN/results.json`, `predict RUN img --out RUN/checkpoints/best/...`)."""
    png = next((trained.parent / "pngs").glob("*.png")) if (trained.parent / "pngs").is_dir() else None
    if png is None:
        from PIL import Image
        png = tmp_path / "x.png"
        Image.new("L", (8, 8)).save(png)
    before = {p: p.read_bytes() for p in [trained / "results.json",
                                          trained / "checkpoints" / "best" / "model.safetensors"]}
    for args in (["evaluate", trained, "--data", "digits", "--out", trained / "results.json", "--overwrite"],
                 ["predict", trained, png, "--out", trained / "checkpoints" / "best" / "model.safetensors"]):
        _bad([str(x) for x in args], capsys, "is a file of the run folder")
    assert all(p.read_bytes() == b for p, b in before.items())
    mine = tmp_path / "report.json"
    mine.write_text("mine")
    _bad([str(x) for x in ["evaluate", trained, "--data", "digits", "--out", mine]], capsys,
         "exists already: pass --overwrite")
    assert mine.read_text() == "mine"
    assert main(["evaluate", str(trained), "--data", "digits", "--out", str(mine), "--overwrite"]) == 0
    assert json.loads(mine.read_text())["on"] == "test"
    _bad([str(x) for x in ["evaluate", trained, "--data", "digits", "--out", tmp_path]], capsys, "is a folder")
    _bad([str(x) for x in ["augment", "preview", "--out", tmp_path / "x.txt"]], capsys, "writes .png files")
    assert main(["augment", "preview", "--out", str(tmp_path / "p.png"), "--quiet"]) == 0
    _bad([str(x) for x in ["augment", "preview", "--out", tmp_path / "p.png"]], capsys, "exists already")


def test_predict_skips_unreadable_files_when_asked_and_lists_them(trained, tmp_path, capsys):
    """Issue 28, item 10: one broken file stopped predict on a whole folder; --bad-images skip goes on, and the
    skipped files are listed with why (CSV column `skipped`, JSON field)."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "1b.png").write_bytes(b"not a png")
    _bad(["predict", str(trained), str(folder)], capsys, "--bad-images skip")
    code, out, err = run_cli(["predict", str(trained), str(folder), "--bad-images", "skip"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].endswith(",skipped") and len(lines) == 5
    broken = next(line for line in lines if "1b.png" in line)
    assert broken.split(",")[1] == "" and "cannot identify image file" in broken
    assert all(line.split(",")[-1] == "" for line in lines[1:] if "1b.png" not in line)
    assert "skipped 1 unreadable image" in err
    from fewlabels import predict

    rows = predict(model_path=str(trained), inputs=[str(folder)], bad_images="skip", quiet=True)
    assert [Path(r["file"]).name for r in rows if "skipped" in r] == ["1b.png"]
    assert all(len(r["top"]) == 3 for r in rows if "skipped" not in r)


def test_a_label_budget_that_disagrees_with_split_is_one_error(trained, tmp_path, capsys):
    """--split decides the labelled images; a --labels-per-class or --labels beside it that says otherwise used to be
    accepted, ignored and recorded in config.yaml. The same budget as the split's is fine."""
    split = trained / "split.json"  # 100 labelled digits, 10 per class
    for flag, value in (("--labels-per-class", 7), ("--labels", 250)):
        code, _, err = run_cli(["train", "--data", "digits", "--split", split, "--out", tmp_path / f"x{value}",
                                *FAST[:-2], flag, value], capsys)
        assert code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith(f"fewlabels: error: --split {split} has 100 labelled images "
                                                       f"(10-10 per class), not {flag} {value}: the split decides")
    code, _, err = run_cli(["train", "--data", "digits", "--split", split, "--out", tmp_path / "ok", *FAST], capsys)
    assert code == 0, err

"""`fewlabels export`: ONNX (run with onnxruntime) and TorchScript files of every model family give PyTorch's logits
from uint8 or float images; the sidecar JSON; `predict` on an exported .onnx file; the user's errors."""

import json
import sys

import numpy as np
import pytest
import torch

from fewlabels import export, predict, train
from fewlabels.cli import main
from fewlabels.engine.checkpoint import save_checkpoint, update_meta
from fewlabels.errors import FewLabelsError
from fewlabels.eval import normalize
from fewlabels.models import create_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
TOL = 1e-3

# (registry name, model kwargs, (C, H, W)): every family, built without weights
FAMILIES = [
    ("cnn-tiny", {}, (3, 32, 32)),
    ("cnn-tiny-p2", {}, (3, 32, 32)),
    ("resnet20", {}, (3, 32, 32)),
    ("mlp", {"image_size": 28}, (1, 28, 28)),
    ("timm:resnet18", {}, (3, 32, 32)),
]


def _checkpoint(tmp_path, name, kwargs, shape, classes=5):
    """An untrained model saved as training saves it, with BatchNorm statistics and a head that are not the
    identity / zero, so that the logits are of a trained model's size and a wrong normalisation would show."""
    c, h, w = shape
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, in_chans=c, **kwargs).eval()
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
            elif n.startswith(("head", "fc", "linear", "classifier")) and p.dim() == 2:
                p.normal_(0, 0.5)
    mean, std = (MEAN, STD) if c == 3 else ([0.31], [0.32])
    meta = {"model": name, "model_kwargs": kwargs, "classes": [f"class{i}" for i in range(classes)], "in_chans": c,
            "image_size": [h, w], "mean": mean, "std": std, "dataset": "synthetic"}
    folder = tmp_path / name.replace(":", "_") / "checkpoints" / "best"
    save_checkpoint(folder, model, meta)
    return folder, model, meta


def _images(shape, n=64):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


MEASURED: dict[str, float] = {}


@pytest.mark.parametrize("name,kwargs,shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_exported_files_give_pytorchs_logits(tmp_path, name, kwargs, shape):
    folder, model, meta = _checkpoint(tmp_path, name, kwargs, shape)
    x = _images(shape)
    with torch.no_grad():  # float32, no autocast: the reference
        ref = model(normalize(x, torch.tensor(meta["mean"]), torch.tensor(meta["std"]), channels_last=False))
    assert ref.std() > 0.05  # logits of a size where a wrong normalisation shows
    worst = 0.0
    for fmt, dtype in (("onnx", "uint8"), ("onnx", "float"), ("torchscript", "uint8")):
        out = tmp_path / f"m-{dtype}.{'onnx' if fmt == 'onnx' else 'pt'}"
        res = export(model_path=str(folder), format=fmt, input_dtype=dtype, out=str(out), quiet=True)
        assert res["file"] == str(out) and res["check"]["max_abs_logit_diff"] <= TOL
        inp = x if dtype == "uint8" else x.float() / 255
        if fmt == "onnx":
            s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            (i,), (o,) = s.get_inputs(), s.get_outputs()
            assert (i.name, o.name) == ("images", "logits")
            assert i.type == ("tensor(uint8)" if dtype == "uint8" else "tensor(float)")
            assert not isinstance(i.shape[0], int) and i.shape[1:] == list(shape)  # dynamic batch
            got = torch.from_numpy(s.run(None, {"images": inp.numpy()})[0])
            got5 = s.run(None, {"images": inp[:5].numpy()})[0]  # another batch size than the 64
            np.testing.assert_allclose(got5, got[:5].numpy(), atol=1e-4)
        else:
            got = torch.jit.load(str(out))(inp)
        diff = float((got - ref).abs().max())
        assert diff <= TOL, (fmt, dtype, diff)
        assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
        worst = max(worst, diff)
    MEASURED[name] = worst
    print(f"{name}: max |logit diff| {worst:.2e} (logit std {float(ref.std()):.2f})")


def test_sidecar_default_output_and_temperature(tmp_path):
    folder, _, meta = _checkpoint(tmp_path, "cnn-tiny", {}, (3, 32, 32))
    update_meta(folder, temperature=1.7)
    run = folder.parent.parent
    (run / "config.yaml").write_text("# fewlabels train\n")  # a run folder: the default output goes in it
    res = export(model_path=str(run), quiet=True)
    assert res["file"] == str(run / "export" / "model.onnx")
    side = json.loads((run / "export" / "model.onnx.json").read_text())
    assert side["classes"] == meta["classes"] and side["image_size"] == [32, 32] and side["in_chans"] == 3
    assert side["input"] == {"name": "images", "dtype": "uint8", "shape": ["batch", 3, 32, 32], "layout": "NCHW",
                             "range": "0-255", "normalised_in_graph": True}
    assert side["temperature"] == 1.7 and side["opset"] == 17 and side["format"] == "onnx"
    assert side["mean"] == MEAN and side["std"] == STD
    import onnx

    proto = onnx.load(res["file"])
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    embedded = json.loads({p.key: p.value for p in proto.metadata_props}["fewlabels"])
    assert embedded["classes"] == meta["classes"]
    ts = export(model_path=str(run), format="torchscript", input_dtype="float", quiet=True)
    assert ts["file"] == str(run / "export" / "model.pt")
    side = json.loads((run / "export" / "model.pt.json").read_text())
    assert side["input"]["dtype"] == "float32" and side["input"]["range"] == "0-1" and "opset" not in side


def test_errors(tmp_path, monkeypatch, capsys):
    folder, _, _ = _checkpoint(tmp_path, "cnn-tiny", {}, (3, 32, 32))
    with pytest.raises(FewLabelsError, match="not one of"):
        export(model_path=str(folder), format="tflite")
    with pytest.raises(FewLabelsError, match="not one of onnx, torchscript"):
        export(model_path=str(folder), format="csv")  # one --format option; each command allows its own values
    with pytest.raises(FewLabelsError, match="not one of csv, json"):
        predict(model_path=str(folder), inputs=[str(tmp_path)], format="onnx")
    with pytest.raises(FewLabelsError, match="no model at"):
        export(model_path=str(tmp_path / "missing"))
    with pytest.raises(FewLabelsError, match="holds no fewlabels checkpoint"):
        export(model_path=str(tmp_path))
    with pytest.raises(FewLabelsError, match="needs a model"):
        export()
    with pytest.raises(FewLabelsError, match=r"\.onnx"):
        export(model_path=str(folder), out=str(tmp_path / "model.txt"))
    with pytest.raises(FewLabelsError, match="--opset is for --format onnx"):
        export(model_path=str(folder), format="torchscript", opset=18)
    out = tmp_path / "m.onnx"
    export(model_path=str(folder), out=str(out), quiet=True)
    with pytest.raises(FewLabelsError, match="exists already"):
        export(model_path=str(folder), out=str(out), quiet=True)
    export(model_path=str(folder), out=str(out), overwrite=True, quiet=True)
    out.with_name("m.onnx.json").unlink()  # the model file alone exists: still refused
    with pytest.raises(FewLabelsError, match="exists already"):
        export(model_path=str(folder), out=str(out), quiet=True)
    # the CLI: one line, status 2
    assert main(["export", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fewlabels: error: ") and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(FewLabelsError, match=r"pip install fewlabels\[export\]"):
        export(model_path=str(folder), out=str(tmp_path / "other.onnx"))


def test_cli_export_and_predict_on_the_onnx_file(tmp_path, capsys):
    run = tmp_path / "run"
    train(out=str(run), data="digits", model="cnn-tiny", labels_per_class=20, epochs=2, min_steps_per_epoch=4,
          hflip=False, batch_size=64, quiet=True, device="cpu")
    update_meta(run, temperature=1.5)  # predict divides by it, from the checkpoint or from the sidecar
    assert main(["export", str(run), "--quiet"]) == 0
    onnx_file = run / "export" / "model.onnx"
    assert onnx_file.is_file() and (run / "export" / "model.onnx.json").is_file()
    from PIL import Image

    from fewlabels.data import load_dataset

    test = load_dataset("digits").test
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(24):
        Image.fromarray(test.images[i, 0].numpy()).save(imgs / f"{i:02d}.png")
    common = {"inputs": [str(imgs)], "top_k": 2, "quiet": True, "device": "cpu"}
    torch_rows = predict(model_path=str(run), **common)
    onnx_rows = predict(model_path=str(onnx_file), **common)
    assert [r["file"] for r in onnx_rows] == [r["file"] for r in torch_rows]
    same = [a["top"][0]["class"] == b["top"][0]["class"] for a, b in zip(torch_rows, onnx_rows)]
    assert sum(same) >= len(same) - 1  # PyTorch's predict runs in bf16 where the CPU has it: a near-tie may flip
    for a, b in zip(torch_rows, onnx_rows):
        if a["top"][0]["class"] == b["top"][0]["class"]:
            assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=0.02)
    # test-time augmentation is done on the raw pixels for ONNX: the same views, the same logits (float32)
    from fewlabels.engine.checkpoint import load_model
    from fewlabels.eval import predict_logits
    from fewlabels.methods.exported import OnnxClassifier

    model, meta = load_model(run, "cpu")
    x = test.images[:32]
    for flip, t in ((False, 0), (True, 0), (True, 2)):
        ref = predict_logits(model, x, meta["mean"], meta["std"], dtype=None, tta_flip=flip, tta_translate=t)
        got = OnnxClassifier(onnx_file, "cpu").logits(x, flip, t, batch_size=10)
        assert float((got - ref).abs().max()) <= TOL, (flip, t)
    # the same CSV as for a run folder, through the CLI
    out_csv = tmp_path / "p.csv"
    assert main(["predict", str(onnx_file), str(imgs), "--out", str(out_csv), "--tta-flip", "--tta-translate", "1",
                 "--device", "cpu"]) == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "file,class_1,prob_1,class_2,prob_2,class_3,prob_3" and len(lines) == 25
    # without the sidecar the copy embedded in the ONNX file is read; a foreign .onnx file is refused
    (run / "export" / "model.onnx.json").unlink()
    assert predict(model_path=str(onnx_file), **common) == onnx_rows
    import onnx

    bare = onnx.load(str(onnx_file))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(FewLabelsError, match="not written by `fewlabels export`"):
        predict(model_path=str(tmp_path / "bare.onnx"), **common)

"""Export the 4,000-label split of ../shared's JPEG CIFAR-10 that fewlabels trains on, as arrays a peer reads.

The split is made by fewlabels' own code, the one `fewlabels selftrain --recipe cifar-cpu --labels-per-class 400`
runs (`fewlabels.data.prepare.prepare_data`: seeded, stratified; the recipe holds out no validation images,
`--val 0`), and saved as that command saves it, as split.json. Both systems then read the same images:

    OUT/split.json            pass to fewlabels as --split OUT/split.json
    OUT/labelled_x.npy        uint8 (4000, 32, 32, 3), NHWC, RGB       OUT/labelled_y.npy     int64 (4000,)
    OUT/unlabelled_x.npy      uint8 (46000, 32, 32, 3)                 OUT/unlabelled_y.npy   int64: true labels,
                                                                         for reporting only, never for training
    OUT/test_x.npy            uint8 (10000, 32, 32, 3)                 OUT/test_y.npy         int64 (10000,)
    OUT/meta.json             classes, counts, the data folder, the split's options, sha256 of every file

Run with fewlabels' own venv:

    .venv/bin/python benchmarks/peers/export_split.py [--data DIR] [--out DIR] [--labels-per-class 400] [--seed 0]

The default data is ../shared/data/cifar10-jpeg.tar.gz, unpacked once into ~/.cache/fewlabels/unpacked/cifar10; the
default OUT is ~/.cache/fewlabels/peers/cifar10_4000 (outside the repository). A second run with the same options
finds the arrays and only checks them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _shared_data import unpacked  # noqa: E402

from fewlabels.data.prepare import DataConfig, prepare_data  # noqa: E402
from fewlabels.data.split import Split  # noqa: E402

DEFAULT_OUT = Path.home() / ".cache" / "fewlabels" / "peers" / "cifar10_4000"
ARRAYS = ("labelled_x", "labelled_y", "unlabelled_x", "unlabelled_y", "test_x", "test_y")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def nhwc(images) -> np.ndarray:
    """fewlabels' uint8 (N, C, H, W) tensor as a contiguous uint8 (N, H, W, C) array (what USB's datasets take)."""
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def export(data: str, out: Path, labels_per_class: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").unlink(missing_ok=True)  # else prepare_data would reuse it, as a resumed run does
    dc = DataConfig(data=data, labels_per_class=labels_per_class, val=0.0, split_seed=seed)
    ds, split = prepare_data(dc, out)  # writes out/split.json, as a fewlabels run writes it into its run folder
    if ds.test is None:
        sys.exit(f"{data} has no test/ folder: the comparison needs the dataset's own test images")
    if ds.train.classes != ds.test.classes:
        sys.exit(f"train and test classes differ in {data}: {ds.train.classes} vs {ds.test.classes}")
    lab, unl = ds.train.subset(split.labelled), ds.train.subset(split.unlabelled)
    parts = {"labelled_x": nhwc(lab.images), "labelled_y": lab.labels.numpy(),
             "unlabelled_x": nhwc(unl.images), "unlabelled_y": unl.labels.numpy(),
             "test_x": nhwc(ds.test.images), "test_y": ds.test.labels.numpy()}
    for name, arr in parts.items():
        np.save(out / f"{name}.npy", arr)
    meta = {
        "data": str(Path(data).expanduser().resolve()),
        "classes": list(ds.train.classes),
        "labels_per_class": labels_per_class, "split_seed": seed, "val": 0,
        "fewlabels_options": f"--labels-per-class {labels_per_class} --split-seed {seed} --val 0",
        "counts": {name: int(arr.shape[0]) for name, arr in parts.items() if name.endswith("_x")},
        "labelled_per_class": np.bincount(parts["labelled_y"], minlength=len(ds.train.classes)).tolist(),
        "image_shape_hwc": list(parts["test_x"].shape[1:]),
        "sha256": {p.name: sha256(p) for p in sorted(out.glob("*.npy")) if p.stem in ARRAYS}
        | {"split.json": sha256(out / "split.json")},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def check(out: Path, labels_per_class: int, seed: int) -> dict | None:
    """The meta.json of an earlier export with these options whose files are all there and unchanged, else None."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("labels_per_class") != labels_per_class or meta.get("split_seed") != seed:
        return None
    for name, digest in meta.get("sha256", {}).items():
        if not (out / name).is_file() or sha256(out / name) != digest:
            return None
    Split.load(out / "split.json")  # fewlabels' own check of the file
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (train/<class>/, test/<class>/); default: "
                    "../shared's JPEG copy, unpacked once into ~/.cache/fewlabels/unpacked/cifar10")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    ap.add_argument("--labels-per-class", type=int, default=400, help="label budget per class (default 400)")
    ap.add_argument("--seed", type=int, default=0, help="fewlabels' --split-seed (default 0, fewlabels' default)")
    ap.add_argument("--force", action="store_true", help="export again even when an unchanged export is there")
    a = ap.parse_args()
    t0 = time.perf_counter()
    meta = None if a.force else check(a.out, a.labels_per_class, a.seed)
    if meta is None:
        data = a.data or str(unpacked("cifar10"))
        meta = export(data, a.out, a.labels_per_class, a.seed)
        print(f"exported in {time.perf_counter() - t0:.1f} s")
    else:
        print("an unchanged export with these options is already there")
    print(f"{a.out}: {meta['counts']} (labelled per class {meta['labelled_per_class']})")
    print(f"fewlabels side: --data {meta['data']} --split {a.out / 'split.json'}")


if __name__ == "__main__":
    main()

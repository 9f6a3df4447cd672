"""FC vs CNN and the translation probe on MNIST: why convolution suits images, measured.

An MLP and cnn-tiny of matched parameter counts, trained and tested three ways (as is; digits on the left half of a
28×56 canvas for training and on the right half for testing; one fixed random pixel permutation for both) by
`fewlabels probe fc-vs-cnn`, then `fewlabels probe equivariance` on both standard models (shifts of 1, 2, 4, 8
pixels). Training images: a stratified subsample of MNIST's 60,000 (the `--labels` budget of the command), all 10,000
test images. No augmentation, bf16 autocast where the CPU has it (fit's default).

    .venv/bin/python benchmarks/probes_mnist.py [--smoke] [-- FC-VS-CNN OPTIONS]

Options after `--` go verbatim to `fewlabels probe fc-vs-cnn`, e.g. `-- --epochs 8 --labels 20000`.

Needs ../shared/data/mnist-png.tar.gz (the project's shared folder beside the repo; FEWLABELS_SHARED points
elsewhere), unpacked once into ~/.cache/fewlabels/unpacked/mnist by this script. Writes
benchmarks/results/probes_mnist.{json,md,png}; the run folders go to runs/probes_mnist/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from _common import machine_info, run_fewlabels, split_passthrough, started, write_results

from fewlabels.probes import plot_fc_vs_cnn
from fewlabels.probes.equivariance import format_value, mean_over_directions
from fewlabels.probes.fc_vs_cnn import fc_vs_cnn_markdown

OUT = "runs/probes_mnist"  # the run folders (outside git)
FC_VS_CNN = ["--labels", "12000", "--epochs", "4", "--cnn", "cnn-tiny"]
EQUIVARIANCE = ["--shifts", "1,2,4,8", "--num-images", "1000"]
SMOKE_FC_VS_CNN = ["--labels", "1000", "--epochs", "1"]  # checks the script, not the figures
SMOKE_EQUIVARIANCE = ["--num-images", "100"]


def _nan(v):
    return math.nan if v is None else v


def _equivariance_summary(res: dict) -> dict:
    """The probe's result (as its equivariance.json has it: null where undefined), plus the errors per shift averaged
    over the two directions (None where undefined)."""
    res = {**res, "rows": [{**r, "stage_errors": [_nan(e) for e in r["stage_errors"]],
                            "pooled_change": _nan(r["pooled_change"]),
                            "prediction_change": _nan(r["prediction_change"])} for r in res["rows"]]}
    by_shift = {str(k): {key: ([None if math.isnan(e) else e for e in v] if isinstance(v, list)
                              else (None if math.isnan(v) else v)) for key, v in row.items()}
                for k, row in mean_over_directions(res).items()}
    keep = ("images", "input_size", "circular", "margin", "stages", "rows", "accuracy", "notes")
    return {**{k: res[k] for k in keep}, "by_shift": by_shift}


def _plot(data: dict, path: Path) -> None:
    from fewlabels.report import _plt

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_fc_vs_cnn(data, None, title=f"test accuracy ({data['train_images']:,} training images, "
                   f"{data['epochs']} epochs)", ax=ax1)
    eq = data["cnn_equivariance"]["by_shift"]
    ks = sorted(eq, key=int)
    for i, stage in enumerate(data["cnn_equivariance"]["stages"]):
        pts = [(int(k), eq[k]["stage_errors"][i]) for k in ks if eq[k]["stage_errors"][i] is not None]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=f"{data['params']['cnn_name']} stage {i + 1} map "
                     f"(stride {stage['stride']})")
    for key, style in (("cnn", "-"), ("fc", "--")):
        name = data["params"]["cnn_name"] if key == "cnn" else "FC (mlp)"
        by = data[f"{key}_equivariance"]["by_shift"]
        ax2.plot([int(k) for k in ks], [by[k]["prediction_change"] for k in ks], style, marker="s",
                 label=f"{name}: share of predictions changed")
        ax2.plot([int(k) for k in ks], [by[k]["pooled_change"] for k in ks], style, marker="^",
                 label=f"{name}: pooled features change")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks([int(k) for k in ks], ks)
    ax2.set_xlabel("shift (pixels, mean of horizontal and vertical)")
    ax2.set_ylabel("relative error / share")
    ax2.set_title("translation probe (standard models)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(data: dict) -> str:
    cnn = data["params"]["cnn_name"]
    intro = (f"Translation probe of the standard models ({data['cnn_equivariance']['images']} test images, "
             "background-filled shifts, mean of horizontal and vertical; the map error is "
             f"‖F(shift x) − shift F(x)‖ / ‖F(x)‖ without the outer {data['cnn_equivariance']['margin']} input "
             "pixels, 0 = bit-identical, n/a where the stage's stride does not divide the shift; pooled change: "
             "‖g(shift x) − g(x)‖ / ‖g(x)‖ of the pooled features g):")
    setup = (f"Test accuracy on all {data['test_images']:,} MNIST test images after {data['epochs']} epochs on "
             f"{data['train_images']:,} training images (a stratified subsample of the 60,000), no augmentation, "
             "SGD lr 0.1, batch 256, bf16 autocast. shifted: each 28×28 digit on a 28×56 canvas, in its left half "
             "for training and its right half for testing (last column: tested on the left, as trained); permuted: "
             "one fixed random permutation of the 784 pixel positions for training and test. The MLP has two hidden "
             f"layers of {data['mlp_hidden']['standard'][0]} units ({data['mlp_hidden']['shifted'][0]} on the wider "
             f"canvas) to match the CNN's parameters. One seed (0). Total {data['minutes']['total']:.1f} minutes "
             "on 2 cores shared with other processes (see the load average in the JSON).")
    lines = [fc_vs_cnn_markdown(data), setup, "", intro, ""]
    stages = data["cnn_equivariance"]["stages"]
    head = ["shift (px)", *[f"{cnn} stage {s['stage']} (stride {s['stride']}) map error" for s in stages],
            f"{cnn} pooled change", f"{cnn} predictions changed", "FC pooled change", "FC predictions changed"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    for k, row in sorted(data["cnn_equivariance"]["by_shift"].items(), key=lambda kv: int(kv[0])):
        fc = data["fc_equivariance"]["by_shift"][k]
        cells = [k, *[format_value(e) for e in row["stage_errors"]], format_value(row["pooled_change"]),
                 format_value(row["prediction_change"], True), format_value(fc["pooled_change"]),
                 format_value(fc["prediction_change"], True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _out(smoke: bool) -> str:
    return OUT + ("_smoke" if smoke else "")


def plan(extra: list[str], mnist: str, smoke: bool = False) -> dict[str, list[str]]:
    """The three commands (without `fewlabels`): the FC-vs-CNN comparison, then the probe of each standard model."""
    out = _out(smoke)
    fc = f"{out}/fc-vs-cnn"
    return {"fc_vs_cnn": ["probe", "fc-vs-cnn", "--data", mnist, *FC_VS_CNN, *extra,
                          *(SMOKE_FC_VS_CNN if smoke else []), "--out", fc],
            **{f"equivariance_{key}": ["probe", "equivariance", f"{fc}/standard-{key}", "--data", mnist,
                                       *EQUIVARIANCE, *(SMOKE_EQUIVARIANCE if smoke else []), "--out",
                                       f"{out}/equivariance-{key}"] for key in ("cnn", "fc")}}


def planned_commands(argv: list[str], data: str = "MNIST") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    return [["fewlabels", *args] for args in plan(extra, data, a.smoke).values()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed verbatim to `fewlabels probe fc-vs-cnn`")
    ap.add_argument("--smoke", action="store_true", help="1,000 training images, 1 epoch, 100 probe images: checks "
                    "the script (results/probes_mnist_smoke.*)")
    return ap


def main() -> None:
    from _shared_data import unpacked

    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    name = "probes_mnist" + ("_smoke" if a.smoke else "")
    mnist = unpacked("mnist")  # train/<digit>/*.png, test/<digit>/*.png (+ csv files the folder loader ignores)
    start = started()  # the cores are shared: other processes slow the run down, see the minutes
    shutil.rmtree(_out(a.smoke), ignore_errors=True)  # fresh runs: an existing folder would be resumed
    runs, results = [], {}
    for key, args in plan(extra, str(mnist), a.smoke).items():
        run = run_fewlabels(args)
        out = Path(args[args.index("--out") + 1])
        results[key] = json.loads((out / ("fc_vs_cnn.json" if key == "fc_vs_cnn" else "equivariance.json")).read_text())
        runs.append({"key": key, "command": run["command"], "minutes": round(run["minutes"], 2)})
    fc_vs_cnn = results["fc_vs_cnn"]
    data = {
        "data": "MNIST (../shared/data/mnist-png.tar.gz, lossless PNG copy of the official files)",
        "train_images": fc_vs_cnn["train_images"],
        "train_images_note": f"a stratified subsample of the 60,000 training images (seed 0), to keep the run "
                             f"under 15 minutes on 2 CPU cores; all {fc_vs_cnn['test_images']:,} test images",
        "test_images": fc_vs_cnn["test_images"], "epochs": fc_vs_cnn["epochs"],
        "fc": fc_vs_cnn["fc"], "cnn": fc_vs_cnn["cnn"], "params": fc_vs_cnn["params"],
        "mlp_hidden": fc_vs_cnn["mlp_hidden"],
        "cnn_equivariance": _equivariance_summary(results["equivariance_cnn"]),
        "fc_equivariance": _equivariance_summary(results["equivariance_fc"]),
        "train_config": fc_vs_cnn["train_config"],
        "minutes": {"total": round(sum(r["minutes"] for r in runs), 2), "training_and_testing": runs[0]["minutes"],
                    "per_model": fc_vs_cnn["minutes"]},
        "load_average_before": start.get("load_average_at_start_1_5_15", [None])[0],
        "runs": runs, **start,
    }
    table_md = _table(data)
    print(table_md)
    data["smoke"] = a.smoke
    write_results(name, {**data, "machine": machine_info()}, table_md)
    _plot(data, RESULTS / f"{name}.png")
    print(f"written: {RESULTS / name}.json, .md, .png ({data['minutes']['total']:.1f} minutes)")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

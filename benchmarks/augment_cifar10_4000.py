"""Augmentation presets on CIFAR-10 (JPEG copy in ../shared) with 4,000 labels: same model, same budget, one
`fewlabels train` command each, differing only in --augment (and --cutmix).

    .venv/bin/python benchmarks/augment_cifar10_4000.py [--presets weak,strong] [--smoke] [-- FEWLABELS OPTIONS]

Options after `--` go verbatim to every command, e.g. `-- --epochs 120` (to see whether the stronger presets catch up
with a longer schedule). Writes benchmarks/results/augment_cifar10_4000.{json,md}; with --epochs other than 40 the
name gets an `_e<epochs>` suffix, and a subset of presets adds their names (so two subsets can run side by side, one
torch thread each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flag_value, run_fewlabels, run_options, split_passthrough, started, write_results

VARIANTS = {"none": ["--augment", "none"], "weak": ["--augment", "weak"], "strong": ["--augment", "strong"],
            "strong+cutmix": ["--augment", "strong", "--cutmix", "1.0"]}
OPTIONS = ["--labels", "4000", "--val", "0", "--model", "cnn-s", "--epochs", "40", "--batch-size", "128", "--lr", "0.1",
           "--weight-decay", "0.0005", "--schedule", "cosine", "--warmup-epochs", "2", "--seed", "0", "--split-seed",
           "0", "--eval-every", "10"]
SMOKE = ["--epochs", "1", "--labels", "500"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="options after -- are passed verbatim to every `fewlabels train` command")
    ap.add_argument("--presets", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--data", default=None, help="the CIFAR-10 folder (default: ../shared's JPEG copy, unpacked)")
    ap.add_argument("--smoke", action="store_true", help=f"adds {' '.join(SMOKE)}")
    return ap


def plan(a: argparse.Namespace, extra: list[str], data: str) -> dict[str, list[str]]:
    unknown = [p for p in a.presets.split(",") if p not in VARIANTS]
    if unknown:
        build_parser().error(f"unknown preset(s) {unknown}; choose from {', '.join(VARIANTS)}")
    tail = [*extra, *(SMOKE if a.smoke else [])]
    epochs = flag_value([*OPTIONS, *tail], "--epochs")
    return {p: ["train", "--data", data, *OPTIONS, *VARIANTS[p], *tail, "--out",
                f"runs/bench-augment-{p}-e{epochs}{'-smoke' if a.smoke else ''}"] for p in a.presets.split(",")}


def planned_commands(argv: list[str], data: str = "DATA") -> list[list[str]]:
    own, extra = split_passthrough(argv)
    return [["fewlabels", *args] for args in plan(build_parser().parse_args(own), extra, data).values()]


def main() -> None:
    own, extra = split_passthrough()
    a = build_parser().parse_args(own)
    if a.data is None:
        from _shared_data import unpacked

        a.data = str(unpacked("cifar10"))
    start = started()
    rows, runs = {}, []
    for name, args in plan(a, extra, a.data).items():
        out = Path(flag_value(args, "--out"))
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: an existing folder would be resumed
        run = run_fewlabels(args)
        res = json.loads((out / "results.json").read_text())
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        opts = run_options(out)
        rows[name] = {"test_accuracy": res["test_acc"], "minutes": run["minutes"],
                      "final_train_loss": last["train_loss"], "augment": opts["augment"],
                      **({"cutmix": opts["cutmix"]} if opts.get("cutmix") else {})}
        runs.append({"command": run["command"], "preset": name, **rows[name]})
        print(name, rows[name], flush=True)
    labels, model, epochs = opts.get("labels"), opts.get("model"), opts.get("epochs")
    data_out = {"model": model, "labels": labels, "epochs": epochs, "seed": opts.get("seed"), "variants": rows,
                "runs": runs, "smoke": a.smoke, **start}
    table = (f"CIFAR-10 (JPEG copy), {labels} labels, {model}, {epochs} epochs, one seed\n\n"
             "| preset | test accuracy | final train loss | minutes |\n|---|---|---|---|\n"
             + "".join(f"| {k} | {v['test_accuracy']:.4f} | {v['final_train_loss']:.3f} | {v['minutes']:.1f} |\n"
                       for k, v in rows.items())
             + "\nstrong = weak + RandAugment(2, 9) + Cutout(16); CutMix with probability 1. Stronger augmentation "
               "is a regulariser: it pays off only once the schedule is long enough to fit the harder views (see the "
               "final train losses).\n")
    name = ("augment_cifar10_4000" + (f"_e{epochs}" if epochs != 40 else "")
            + ("" if list(rows) == list(VARIANTS) else "_" + "-".join(rows)) + ("_smoke" if a.smoke else ""))
    write_results(name, data_out, table)
    print(table)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)

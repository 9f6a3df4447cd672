"""Peak memory of the CLI on a laptop-sized photo folder: `train`, `selftrain`, `evaluate` and `predict` at 64 px.

The folder (built once, outside the repository, from the ../shared CIFAR-10 JPEGs): 10 classes, 9,469 training and
3,925 test images, the sizes of Imagenette's train and validation splits, the 10-class photo folder of issue 26.
../shared holds no photos larger than CIFAR's 32x32 (MNIST is 28x28 grey), so each CIFAR image is upsampled
(bicubic) to 160x160 and saved as a JPEG (quality 90): the size of Imagenette's "160 px" edition, so decoding at
`--image-size 64` goes through the same path as a user's photos (JPEG draft mode at 1/2 scale, then a resize), and
the decoded set is the same 116 MB of uint8 as in the issue. The pixels are CIFAR's, blurred by the upsampling:
accuracy here says nothing about real photos, memory and time do.

Every command runs as a user runs it, `python -m fewlabels ...` in a fresh process; its peak resident set size is
the kernel's high-water mark for that process (ru_maxrss from wait4). While it runs, the RSS of the whole process
tree (the decode workers included) is sampled every 20 ms: `tree_peak_rss_mb` is the peak of that sum (shared pages
of forked workers count once per process, so it overstates) and `tree_peak_pss_mb` the proportional set size, which
splits shared pages between the processes that share them. Each command runs with a cold decode cache (a fresh
--cache-dir: the folder is decoded) and then a warm one (the same cache: loaded from safetensors).

    .venv/bin/python benchmarks/memory_folder.py [--eval-batch-sizes 1024,256] [--smoke]
    .venv/bin/python benchmarks/memory_folder.py --quick --rounds 1   # results/memory_folder.md
    .venv/bin/python benchmarks/memory_folder.py --only probe --eval-probe 1024,256   # one evaluation pass

--quick runs each command once (train decodes into a fresh cache, the others load it): on a loaded 2-core machine
the full plan takes hours. --code measures another checkout (e.g. the commit before a change), --python another
torch build (e.g. a CPU-only wheel, as on a laptop).

Needs ../shared (or FEWLABELS_SHARED). Writes results/memory_folder.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, results_name, run_main, write_results
from _shared_data import unpacked

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
N_TRAIN, N_TEST = 9469, 3925  # Imagenette's train and validation splits
PHOTO_SIZE = 160  # Imagenette "160 px"
TARGET_MB = 1536  # issue 26: peak RSS ≤ 1.5 GB


def build_folder(cifar: Path, root: Path, n_train: int, n_test: int, size: int) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg: the first images of each CIFAR-10 class (sorted names),
    as even a share per class as the totals allow, upsampled to size x size. Built once (root/.complete)."""
    from PIL import Image

    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"building {root} ({n_train} + {n_test} images at {size} px, once)", flush=True)
    for split, total in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(CLASSES):
            count = total // len(CLASSES) + (k < total % len(CLASSES))
            (root / split / c).mkdir(parents=True)
            for f in sorted((cifar / split / c).iterdir())[:count]:
                with Image.open(f) as img:
                    img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
                        root / split / c / f.name, quality=90)
    (root / ".complete").touch()
    return root


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if line[0].isupper() and ":" in line)
        return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


def measure(args: list[str], log: Path, env: dict[str, str], cwd: Path = REPO, every: float = 0.02,
            python: str = sys.executable) -> dict:
    """Run `python -m fewlabels ARGS`; its peak RSS (wait4's ru_maxrss) and the sampled peaks of its process tree."""
    cmd = [python, "-m", "fewlabels", *args]
    print("$ fewlabels " + shlex.join(args), flush=True)
    peaks = {"tree_rss": 0, "tree_pss": 0, "main_rss_sampled": 0}
    timeline: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        done = threading.Event()

        def sample() -> None:
            last = -1.0
            while not done.is_set():
                rss = pss = 0
                for p in _tree(proc.pid):
                    r, s = _rss_pss_kb(p)
                    rss, pss = rss + r, pss + s
                    if p == proc.pid:
                        peaks["main_rss_sampled"] = max(peaks["main_rss_sampled"], r)
                        now = time.perf_counter() - t0
                        if now - last >= 0.5:
                            timeline.append((round(now, 1), r // 1024))
                            last = now
                peaks["tree_rss"], peaks["tree_pss"] = max(peaks["tree_rss"], rss), max(peaks["tree_pss"], pss)
                done.wait(every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"fewlabels {shlex.join(args)} failed (exit {proc.returncode}); see {log}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "tree_peak_rss_mb": round(peaks["tree_rss"] / 1024, 1),
            "tree_peak_pss_mb": round(peaks["tree_pss"] / 1024, 1), "seconds": round(seconds, 1),
            "rss_timeline_mb": timeline}


EVAL_PROBE = """
import sys, time, torch
from fewlabels.models import create_model
from fewlabels.eval import predict_logits
from fewlabels.utils import pick_dtype
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
name, bs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = create_model(name, num_classes=10).to(memory_format=torch.channels_last)
x = torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8)
dtype, norm = pick_dtype("auto", torch.device("cpu")), ((0.5,) * 3, (0.25,) * 3)
predict_logits(model, x[:bs], *norm, batch_size=bs, dtype=dtype)  # warm-up: oneDNN primitives, first pages
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # restart VmHWM, the peak RSS, from here
t, c = time.perf_counter(), time.process_time()
predict_logits(model, x, *norm, batch_size=bs, dtype=dtype)
print(status("VmHWM") - base, time.perf_counter() - t, time.process_time() - c)
"""


def eval_batch_probe(python: str, env: dict[str, str], cwd: Path, models: list[str], sizes: list[int],
                     n: int = 2048, rounds: int = 2) -> list[dict]:
    """What one evaluation pass adds to the RSS, and its time, per model and batch size: predict_logits on n random
    64 px images in a fresh process each time (alternating batch sizes; medians of `rounds`)."""
    out = []
    for model in models:
        got: dict[int, list[list[float]]] = {bs: [] for bs in sizes}
        for _ in range(rounds):
            for bs in sizes:
                r = subprocess.run([python, "-c", EVAL_PROBE, model, str(bs), str(n)], env=env, cwd=cwd,
                                   capture_output=True, text=True, check=True)
                got[bs].append([float(v) for v in r.stdout.split()[-3:]])
        for bs in sizes:
            rss, wall, cpu = (sorted(col)[len(col) // 2] for col in zip(*got[bs]))
            out.append({"model": model, "eval_batch_size": bs, "images": n, "added_peak_rss_mb": round(rss),
                        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)})
            print(f"  eval probe {model} batch {bs}: +{rss:.0f} MB, {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return out


def code_commit(repo: Path) -> str:
    """The commit of the fewlabels code under test (+dirty when its tree has changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False).stdout.strip()
    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("+dirty" if git("status", "--porcelain", "--", "fewlabels") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1, help="epochs of train (memory peaks in the first steps)")
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--student-epochs", type=int, default=1)
    ap.add_argument("--student-models", default="cnn-s", help="selftrain's students (issue 26: 2 rounds of cnn-s)")
    ap.add_argument("--eval-batch-sizes", default="",
                    help="comma-separated --eval-batch-size values to also run warm `train` with, e.g. 1024,256")
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="also run warm `train` and `selftrain` with --micro-batch N (the batch in chunks of N)")
    ap.add_argument("--only", default="", help="comma-separated subset of: train, selftrain, evaluate, predict")
    ap.add_argument("--rounds", type=int, default=2, help="selftrain's student rounds")
    ap.add_argument("--eval-probe", default="",
                    help="comma-separated evaluation batch sizes to probe with predict_logits alone (cnn-s, cnn-m), "
                    "e.g. 1024,256; with --only probe nothing else runs")
    ap.add_argument("--quick", action="store_true",
                    help="each command once: train with a cold cache (it decodes), the others with the warm one")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="the fewlabels checkout to measure (its folder goes first on PYTHONPATH); default this one")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python (and so the torch build) that runs the commands; default this one")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "fewlabels" / "memory_folder")
    ap.add_argument("--results-name", type=results_name, default=None)
    ap.add_argument("--note", default="", help="what the measured code is, for the results (e.g. a patch on top)")
    ap.add_argument("--smoke", action="store_true", help="a 400 + 100 image folder: checks the pipeline only")
    a = ap.parse_args()
    n_train, n_test = (400, 100) if a.smoke else (N_TRAIN, N_TEST)
    data = build_folder(unpacked("cifar10"), a.workdir / f"photos{PHOTO_SIZE}-{n_train}", n_train, n_test,
                        PHOTO_SIZE)
    code = a.code.resolve()
    env = {**os.environ, "PYTHONPATH": str(code)}
    # run from the checkout: `python -m` puts the working folder first on sys.path
    probe = subprocess.run([a.python, "-c", "import fewlabels, torch; print(fewlabels.__file__, torch.__version__)"],
                           env=env, cwd=code, capture_output=True, text=True, check=True).stdout.split()
    torch_build = probe[1]
    probe = probe[0]
    if not probe.startswith(str(code)):
        sys.exit(f"PYTHONPATH={code} imports fewlabels from {probe}, not from the checkout to measure")
    name = a.results_name or ("memory_folder_smoke" if a.smoke else "memory_folder")
    work = a.workdir / f"work-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = work / "cache"  # fresh: the first run of each command decodes (cold), the second loads (warm)
    size = ["--image-size", "64"]
    st = ["--labels-per-class", "10" if a.smoke else "50", "--rounds", str(a.rounds), "--teacher-model", "cnn-s",
          "--student-models", a.student_models, "--teacher-epochs", str(a.teacher_epochs), "--student-epochs",
          str(a.student_epochs)]
    only = set(filter(None, a.only.split(","))) or {"train", "selftrain", "evaluate", "predict"}
    plan: list[tuple[str, str, list[str]]] = []  # (command, cache state, args)
    for state in ("cold", "warm"):
        if a.quick and state == "cold":
            if "train" in only:
                plan.append(("train", state, ["train", "--data", str(data), *size, "--epochs", str(a.epochs),
                                              "--cache-dir", str(cache), "--out", str(work / f"train-{state}")]))
            continue
        if a.quick and "train" in only and "selftrain" in only:
            plan.append(("selftrain", state, ["selftrain", "--data", str(data), *size, *st, "--cache-dir",
                                              str(cache), "--out", str(work / f"selftrain-{state}")]))
            continue
        if state == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        if "train" in only:
            plan.append(("train", state, ["train", "--data", str(data), *size, "--epochs", str(a.epochs),
                                          "--cache-dir", str(cache), "--out", str(work / f"train-{state}")]))
        if "selftrain" in only:
            plan.append(("selftrain", state, ["selftrain", "--data", str(data), *size, *st, "--cache-dir",
                                              str(cache), "--out", str(work / f"selftrain-{state}")]))
    if "evaluate" in only or "predict" in only:
        if "train" not in only:
            plan.insert(0, ("train", "cold", ["train", "--data", str(data), *size, "--epochs", str(a.epochs),
                                              "--cache-dir", str(cache), "--out", str(work / "train-cold")]))
        if "evaluate" in only:
            plan.append(("evaluate", "warm", ["evaluate", str(work / "train-cold"), "--data", str(data),
                                              "--cache-dir", str(cache), "--out", str(work / "evaluate.json")]))
        if "predict" in only:
            plan.append(("predict", "no cache", ["predict", str(work / "train-cold"), str(data / "test"),
                                                 "--out", str(work / "predict.csv"), "--quiet"]))
    for bs in filter(None, a.eval_batch_sizes.split(",")):
        plan.append((f"train --eval-batch-size {bs}", "warm",
                     ["train", "--data", str(data), *size, "--epochs", str(a.epochs), "--eval-batch-size", bs,
                      "--cache-dir", str(cache), "--out", str(work / f"train-eval{bs}")]))
    if a.micro_batch:
        mb = ["--micro-batch", str(a.micro_batch)]
        if "train" in only:
            plan.append((f"train --micro-batch {a.micro_batch}", "warm",
                         ["train", "--data", str(data), *size, "--epochs", str(a.epochs), *mb, "--cache-dir",
                          str(cache), "--out", str(work / "train-micro")]))
        if "selftrain" in only:
            plan.append((f"selftrain --micro-batch {a.micro_batch}", "warm",
                         ["selftrain", "--data", str(data), *size, *st, *mb, "--cache-dir", str(cache), "--out",
                          str(work / "selftrain-micro")]))
    if only == {"probe"}:
        plan = []
    runs = []
    t_all = time.perf_counter()
    probe_sizes = [int(v) for v in a.eval_probe.split(",") if v]
    eval_batch = eval_batch_probe(a.python, env, code, ["cnn-s", "cnn-m"], probe_sizes) if probe_sizes else []
    for i, (label, state, args) in enumerate(plan):
        if state == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        r = measure(args, work / f"{i:02d}-{args[0]}-{state}.log", env, cwd=code, python=a.python)
        out = args[args.index("--out") + 1] if "--out" in args else None
        acc = None
        if out and Path(out).is_dir():
            res = Path(out) / ("final.json" if args[0] == "selftrain" else "results.json")
            acc = json.loads(res.read_text()).get("test_acc") if res.is_file() else None
        elif out and out.endswith(".json"):
            acc = json.loads(Path(out).read_text()).get("accuracy")
        runs.append({"command": "fewlabels " + shlex.join(args), "name": label, "cache": state, **r,
                     "test_acc": acc, "target_met": r["peak_rss_mb"] <= TARGET_MB})
        print(f"  {label} ({state}): peak RSS {r['peak_rss_mb']:.0f} MB (tree {r['tree_peak_pss_mb']:.0f} MB PSS) "
              f"in {r['seconds']:.0f} s", flush=True)
    rows = ["| command | decode cache | peak RSS (MB) | process tree peak PSS (MB) | seconds | test accuracy |",
            "|---|---|---:|---:|---:|---:|"]
    for r in runs:
        acc = f"{r['test_acc']:.4f}" if isinstance(r["test_acc"], float) else "–"
        rows.append(f"| `{r['name']}` | {r['cache']} | {r['peak_rss_mb']:.0f} | {r['tree_peak_pss_mb']:.0f} | "
                    f"{r['seconds']:.0f} | {acc} |")
    if eval_batch:
        rows += ["", "One evaluation pass (predict_logits on 2,048 random 64 px images, fresh process, median of 2):",
                 "", "| model | eval batch size | added peak RSS (MB) | wall s | CPU s |", "|---|---:|---:|---:|---:|"]
        rows += [f"| {e['model']} | {e['eval_batch_size']} | {e['added_peak_rss_mb']} | {e['wall_s']} | {e['cpu_s']} |"
                 for e in eval_batch]
    worst = max(r["peak_rss_mb"] for r in runs if r["name"] in ("train", "selftrain")) if any(
        r["name"] in ("train", "selftrain") for r in runs) else None
    micro = [r["peak_rss_mb"] for r in runs if "--micro-batch" in r["name"]]
    worst_micro = max(micro) if micro else None
    md = "\n".join(rows) + (
        f"\n\nFolder: {n_train} training and {n_test} test images in 10 classes (CIFAR-10 JPEGs upsampled to "
        f"{PHOTO_SIZE} px), decoded at 64 px. Target (issue 26): peak RSS ≤ {TARGET_MB} MB for train and selftrain"
        + (f"; measured worst {worst:.0f} MB with the defaults: {'met' if worst <= TARGET_MB else 'not met'}"
           if worst else "")
        + (f"; with --micro-batch {a.micro_batch} {worst_micro:.0f} MB: "
           f"{'met' if worst_micro <= TARGET_MB else 'not met'}" if worst_micro else "") + "."
        + f"\nCode measured: {code_commit(code)}{' (' + a.note + ')' if a.note else ''}, run by torch {torch_build}. "
        "Exact commands in the JSON (`runs`).\n")
    write_results(name, {
        "runs": runs, "eval_batch_probe": eval_batch, "target_peak_rss_mb": TARGET_MB,
        "worst_train_selftrain_peak_rss_mb": worst, "micro_batch": a.micro_batch or None,
        "worst_with_micro_batch_peak_rss_mb": worst_micro,
        "code_commit": code_commit(code), "note": a.note, "torch_running_the_commands": torch_build,
        "folder": {"path": data, "train_images": n_train, "test_images": n_test, "classes": list(CLASSES),
                   "photo_size": PHOTO_SIZE, "decoded_size": 64, "from": "../shared CIFAR-10 JPEGs"},
        "minutes": round((time.perf_counter() - t_all) / 60, 2), "smoke": a.smoke,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "FEWLABELS_"))},
    }, md)
    print(md)


if __name__ == "__main__":
    run_main(main)
